//! The figures: a table for people, JSON lines for tools.

use std::io::Write;

use serde_json::json;

pub(crate) struct Figure {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    /// The same quantity measured on the baseline in the same run (NaN: none).
    pub(crate) baseline: f64,
    pub(crate) note: String,
}

pub(crate) struct Report {
    figures: Vec<Figure>,
    file: std::fs::File,
}

impl Report {
    pub(crate) fn new() -> std::io::Result<Self> {
        std::fs::create_dir_all("target/bench")?;
        Ok(Self {
            figures: Vec::new(),
            file: std::fs::File::create("target/bench/results.jsonl")?,
        })
    }

    /// Records a figure and prints its JSON line at once (a long run shows progress).
    pub(crate) fn add(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        baseline: f64,
        note: &str,
    ) {
        let ratio = if baseline.is_finite() && baseline != 0.0 {
            value / baseline
        } else {
            f64::NAN
        };
        let line = json!({
            "name": name,
            "value": round(value),
            "unit": unit,
            "baseline": if baseline.is_finite() { json!(round(baseline)) } else { json!(null) },
            "ratio": if ratio.is_finite() { json!(round(ratio)) } else { json!(null) },
            "note": note,
        });
        println!("{line}");
        let _ = writeln!(self.file, "{line}");
        self.figures.push(Figure {
            name: name.to_owned(),
            value,
            unit,
            baseline,
            note: note.to_owned(),
        });
    }

    pub(crate) fn print_table(&self) {
        println!();
        println!("| figure | value | baseline | ratio | note |");
        println!("|---|---|---|---|---|");
        for f in &self.figures {
            let ratio = f.value / f.baseline;
            println!(
                "| {} | {} {} | {} | {} | {} |",
                f.name,
                fmt(f.value),
                f.unit,
                if f.baseline.is_finite() {
                    format!("{} {}", fmt(f.baseline), f.unit)
                } else {
                    "—".into()
                },
                if ratio.is_finite() {
                    format!("{ratio:.2}")
                } else {
                    "—".into()
                },
                f.note
            );
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
