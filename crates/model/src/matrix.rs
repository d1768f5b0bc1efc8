//! Matrix builds: a job whose definition has a `matrix` runs each trigger as one build per
//! combination of its axes' values (a *cell*: `OS=linux, RUST=stable`), queued together by
//! one atomic trigger under consecutive numbers, so each cell runs on whichever worker is
//! free, with its own log, status and commit status. The cells of one trigger form a
//! *group* named by its first build's number; the group's status, the one its downstream
//! jobs and notifications see, is worked out from its cells' documents when the last one
//! ends ([`matrix_status`]), never stored, so it cannot disagree with them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::build::{BuildDocument, BuildStatus};
use crate::job::{is_env_name, InvalidField};
use crate::names::BuildNumber;

/// Most axes a matrix may have.
pub const MAX_AXES: usize = 8;
/// Most values one axis may list.
pub const MAX_AXIS_VALUES: usize = 32;
/// Most combinations of the axes' values before `exclude` takes any away: bounds the work
/// of listing the cells, whatever `exclude` says.
pub const MAX_COMBINATIONS: usize = 256;
/// Most builds one trigger of a matrix job queues.
pub const MAX_CELLS: usize = 64;
/// Longest value of an axis, in bytes.
const MAX_VALUE_LEN: usize = 200;

/// A job's matrix: each axis is an environment variable the steps get, with the values it
/// takes; `exclude` takes away the combinations each entry matches (an entry matches a
/// cell when every axis it names has the value it gives). Axes are combined in the order
/// of their names, values in the order listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub axes: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<BTreeMap<String, String>>,
    /// A cell that fails, times out or cannot run cancels the cells still queued or
    /// running: the matrix has failed, and the workers are wanted elsewhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_fast: bool,
}

/// One build's place in its matrix, on its document: the group is the first build the
/// trigger queued, the group's builds are numbers `group` to `group + size - 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixCell {
    pub group: BuildNumber,
    pub index: u32,
    pub size: u32,
    pub cell: BTreeMap<String, String>,
}

impl MatrixCell {
    /// The numbers of every build of the group, this one among them (at most
    /// [`MAX_CELLS`], whatever a document edited by hand says).
    pub fn numbers(&self) -> impl Iterator<Item = BuildNumber> {
        let first = self.group.0;
        let size = u64::from(self.size).min(MAX_CELLS as u64);
        (first..first.saturating_add(size)).map(BuildNumber)
    }

    /// The cell in words, for people and for a commit status's context: `OS=linux, RUST=stable`.
    pub fn label(&self) -> String {
        label(&self.cell)
    }
}

impl Matrix {
    /// Every cell of the matrix, in the order they are numbered.
    pub fn cells(&self) -> Vec<BTreeMap<String, String>> {
        let mut cells = vec![BTreeMap::new()];
        for (axis, values) in &self.axes {
            cells = cells
                .into_iter()
                .flat_map(|cell| {
                    values.iter().map(move |v| {
                        let mut c = cell.clone();
                        c.insert(axis.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        cells.retain(|cell| !self.exclude.iter().any(|e| matches(e, cell)));
        cells
    }

    /// Checks the matrix; `taken` says whether a name is already the job's env variable,
    /// parameter or secret (an axis may not share it: which value would a step see?).
    pub fn validate(&self, taken: impl Fn(&str) -> bool) -> Result<(), InvalidField> {
        if self.axes.is_empty() || self.axes.len() > MAX_AXES {
            return Err(InvalidField::new(
                "matrix.axes",
                format!("must name 1 to {MAX_AXES} axes"),
            ));
        }
        let mut combinations = 1usize;
        for (axis, values) in &self.axes {
            let field = format!("matrix.axes.{axis}");
            if !is_env_name(axis) {
                return Err(InvalidField::new(
                    field,
                    "must match [A-Za-z_][A-Za-z0-9_]* and not start with KILN_",
                ));
            }
            if taken(axis) {
                return Err(InvalidField::new(
                    field,
                    "is also an env variable, parameter or secret of the job",
                ));
            }
            if values.is_empty() || values.len() > MAX_AXIS_VALUES {
                return Err(InvalidField::new(
                    field,
                    format!("must list 1 to {MAX_AXIS_VALUES} values"),
                ));
            }
            for (i, v) in values.iter().enumerate() {
                let bad =
                    v.is_empty() || v.len() > MAX_VALUE_LEN || v.chars().any(char::is_control);
                if bad {
                    return Err(InvalidField::new(
                        format!("{field}[{i}]"),
                        format!("must be 1 to {MAX_VALUE_LEN} bytes without control characters"),
                    ));
                }
                if values[..i].contains(v) {
                    return Err(InvalidField::new(
                        format!("{field}[{i}]"),
                        "is listed twice",
                    ));
                }
            }
            combinations = combinations.saturating_mul(values.len());
        }
        if combinations > MAX_COMBINATIONS {
            return Err(InvalidField::new(
                "matrix.axes",
                format!("make {combinations} combinations, more than {MAX_COMBINATIONS}"),
            ));
        }
        if self.exclude.len() > MAX_COMBINATIONS {
            return Err(InvalidField::new(
                "matrix.exclude",
                format!("may list at most {MAX_COMBINATIONS} entries"),
            ));
        }
        for (i, e) in self.exclude.iter().enumerate() {
            if e.is_empty() {
                return Err(InvalidField::new(
                    format!("matrix.exclude[{i}]"),
                    "must name at least one axis (an empty entry would exclude every cell)",
                ));
            }
            for (axis, value) in e {
                let field = format!("matrix.exclude[{i}].{axis}");
                match self.axes.get(axis) {
                    None => return Err(InvalidField::new(field, "is not an axis of the matrix")),
                    Some(values) if !values.contains(value) => {
                        return Err(InvalidField::new(
                            field,
                            format!("'{value}' is not one of the axis's values"),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        let cells = self.cells().len();
        if cells == 0 || cells > MAX_CELLS {
            return Err(InvalidField::new(
                "matrix",
                format!("makes {cells} cells after exclude; it must make 1 to {MAX_CELLS}"),
            ));
        }
        Ok(())
    }
}

/// A cell in words: `OS=linux, RUST=stable`.
pub fn label(cell: &BTreeMap<String, String>) -> String {
    cell.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the `exclude` entry `e` matches `cell`.
fn matches(e: &BTreeMap<String, String>, cell: &BTreeMap<String, String>) -> bool {
    e.iter().all(|(k, v)| cell.get(k) == Some(v))
}

/// The status a whole matrix ended with, given its cells': `success` when every cell
/// succeeded, otherwise the first of `failure`, `timed_out`, `error`, `lost` and
/// `cancelled` that any cell ended with (what the code did comes before what Kiln or a
/// person did to it). `None` while a cell is still queued or running.
pub fn matrix_status(statuses: impl IntoIterator<Item = BuildStatus>) -> Option<BuildStatus> {
    const GRAVEST_FIRST: [BuildStatus; 6] = [
        BuildStatus::Failure,
        BuildStatus::TimedOut,
        BuildStatus::Error,
        BuildStatus::Lost,
        BuildStatus::Cancelled,
        BuildStatus::Success,
    ];
    let mut worst = BuildStatus::Success;
    for s in statuses {
        if !s.is_final() {
            return None;
        }
        let rank = |s: BuildStatus| GRAVEST_FIRST.iter().position(|g| *g == s);
        if rank(s) < rank(worst) {
            worst = s;
        }
    }
    Some(worst)
}

/// The whole matrix as one build, for what follows its end (downstream builds,
/// notifications): its first cell's document (which names the group) with the group's
/// status ([`matrix_status`]), the span from its first start to its last end, the exit code
/// of a cell that ended with that status, and a reason naming each cell that did not
/// succeed. `None` while a cell has not ended, or when one is gone (retention, deletion).
pub fn group_outcome(group: &[Option<BuildDocument>]) -> Option<BuildDocument> {
    let docs: Vec<&BuildDocument> = group.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let status = matrix_status(docs.iter().map(|d| d.status))?;
    let mut outcome = (*docs.first()?).clone();
    outcome.status = status;
    outcome.started_at = docs.iter().filter_map(|d| d.started_at).min();
    outcome.finished_at = docs.iter().filter_map(|d| d.finished_at).max();
    outcome.duration_ms = match (outcome.started_at, outcome.finished_at) {
        (Some(s), Some(f)) => Some((f - s).num_milliseconds().max(0) as u64),
        _ => None,
    };
    outcome.exit_code = docs
        .iter()
        .find(|d| d.status == status)
        .and_then(|d| d.exit_code);
    let failed: Vec<String> = docs
        .iter()
        .filter(|d| d.status != BuildStatus::Success)
        .map(|d| {
            let label = d.matrix.as_ref().map(MatrixCell::label).unwrap_or_default();
            format!("#{} ({label}) {}", d.number, d.status)
        })
        .collect();
    outcome.reason = (!failed.is_empty()).then(|| {
        format!(
            "{} of the matrix's {} builds did not succeed: {}",
            failed.len(),
            docs.len(),
            failed.join(", ")
        )
    });
    outcome.steps.clear();
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(v: serde_json::Value) -> Matrix {
        serde_json::from_value(v).expect("matrix")
    }

    #[test]
    fn cells_combine_axes_in_name_order_without_the_excluded_ones() {
        let m = matrix(serde_json::json!({
            "axes": {"RUST": ["stable", "1.80"], "OS": ["linux", "mac"]},
            "exclude": [{"OS": "mac", "RUST": "1.80"}]
        }));
        m.validate(|_| false).unwrap();
        let labels: Vec<String> = m
            .cells()
            .into_iter()
            .map(|cell| {
                MatrixCell {
                    group: BuildNumber(1),
                    index: 0,
                    size: 1,
                    cell,
                }
                .label()
            })
            .collect();
        assert_eq!(
            labels,
            [
                "OS=linux, RUST=stable",
                "OS=linux, RUST=1.80",
                "OS=mac, RUST=stable"
            ]
        );
    }

    #[test]
    fn bad_matrices_name_the_field() {
        let cases = [
            (serde_json::json!({"axes": {}}), "matrix.axes"),
            (
                serde_json::json!({"axes": {"KILN_X": ["a"]}}),
                "matrix.axes.KILN_X",
            ),
            (
                serde_json::json!({"axes": {"TAKEN": ["a"]}}),
                "matrix.axes.TAKEN",
            ),
            (serde_json::json!({"axes": {"OS": []}}), "matrix.axes.OS"),
            (
                serde_json::json!({"axes": {"OS": ["a", "a"]}}),
                "matrix.axes.OS[1]",
            ),
            (
                serde_json::json!({"axes": {"OS": ["a\nb"]}}),
                "matrix.axes.OS[0]",
            ),
            (
                serde_json::json!({"axes": {"OS": ["a"]}, "exclude": [{}]}),
                "matrix.exclude[0]",
            ),
            (
                serde_json::json!({"axes": {"OS": ["a"]}, "exclude": [{"CPU": "x"}]}),
                "matrix.exclude[0].CPU",
            ),
            (
                serde_json::json!({"axes": {"OS": ["a", "b"]}, "exclude": [{"OS": "c"}]}),
                "matrix.exclude[0].OS",
            ),
            (
                serde_json::json!({"axes": {"OS": ["a"]}, "exclude": [{"OS": "a"}]}),
                "matrix",
            ),
        ];
        for (v, field) in cases {
            let err = matrix(v.clone()).validate(|n| n == "TAKEN").unwrap_err();
            assert_eq!(err.field, field, "{v}");
        }
        let values: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        let huge = matrix(serde_json::json!({"axes": {"A": values, "B": values}}));
        assert_eq!(huge.validate(|_| false).unwrap_err().field, "matrix.axes");
        let too_many = matrix(serde_json::json!({"axes": {"A": values[..9], "B": values[..8]}}));
        assert_eq!(too_many.validate(|_| false).unwrap_err().field, "matrix");
    }

    #[test]
    fn a_matrix_fails_with_its_gravest_cell_and_has_no_status_while_one_runs() {
        use BuildStatus::*;
        assert_eq!(matrix_status([Success, Success]), Some(Success));
        assert_eq!(matrix_status([Success, Cancelled, Lost]), Some(Lost));
        assert_eq!(matrix_status([Error, Failure, Success]), Some(Failure));
        assert_eq!(matrix_status([TimedOut, Cancelled]), Some(TimedOut));
        assert_eq!(matrix_status([Success, Running]), None);
        assert_eq!(matrix_status([Queued, Failure]), None);
    }

    #[test]
    fn a_cell_knows_its_groups_numbers() {
        let c = MatrixCell {
            group: BuildNumber(7),
            index: 1,
            size: 3,
            cell: BTreeMap::new(),
        };
        let n: Vec<u64> = c.numbers().map(|n| n.0).collect();
        assert_eq!(n, [7, 8, 9]);
    }
}
