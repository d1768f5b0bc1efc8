//! Secrets: values a build's steps get as environment variables, which no api answer, log
//! or build document ever shows. Stored in the hash `kiln:secrets` (name -> [`StoredSecret`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{is_env_name, InvalidField};

/// Shortest value accepted. A log line holding a secret shows `***` in its place; a value
/// of one to three characters would be masked wherever those characters appear in ordinary
/// output, or else shown — so it is refused.
pub const MIN_VALUE_LEN: usize = 4;
/// Longest value accepted (a private key fits).
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// What a log line shows instead of a secret's value.
pub const MASK: &str = "***";

/// A secret as stored: its value — as it is, or sealed (AES-256-GCM, hex) when the api has
/// a `secrets.key` — and who set it when (what listings show instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSecret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// What anyone may know about a secret: everything but its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// A secret's name is the environment variable the steps see it as.
pub fn validate_name(name: &str) -> Result<(), InvalidField> {
    if name.len() > MAX_NAME_LEN || !is_env_name(name) {
        return Err(InvalidField::new(
            "name",
            format!(
                "must match [A-Za-z_][A-Za-z0-9_]*, at most {MAX_NAME_LEN} characters, not starting with KILN_"
            ),
        ));
    }
    Ok(())
}

/// Environment variables cannot hold NUL, and a value must be long enough to be masked.
pub fn validate_value(value: &str) -> Result<(), InvalidField> {
    if value.len() < MIN_VALUE_LEN || value.len() > MAX_VALUE_LEN {
        return Err(InvalidField::new(
            "value",
            format!(
                "must be {MIN_VALUE_LEN} to {MAX_VALUE_LEN} bytes (shorter values cannot be masked in logs)"
            ),
        ));
    }
    if value.contains('\0') {
        return Err(InvalidField::new("value", "must not contain NUL"));
    }
    Ok(())
}

/// Hides secret values in output lines. A multi-line value (a private key) arrives one line
/// at a time, so each of its lines long enough to mask is hidden on its own too.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so a value containing another is hidden whole.
    needles: Vec<String>,
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles: Vec<String> = Vec::new();
        for v in values {
            let parts = std::iter::once(v).chain(v.lines().map(str::trim));
            for p in parts.filter(|p| p.len() >= MIN_VALUE_LEN) {
                if !needles.iter().any(|n| n == p) {
                    needles.push(p.to_owned());
                }
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Self { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The line with every secret value replaced by [`MASK`].
    pub fn mask(&self, line: String) -> String {
        let mut line = line;
        for n in &self.needles {
            if line.contains(n.as_str()) {
                line = line.replace(n.as_str(), MASK);
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_whole_and_line_by_line() {
        let m = Masker::new([
            "hunter22",
            "-----BEGIN KEY-----\nAAAABBBB\n-----END KEY-----",
        ]);
        assert_eq!(m.mask("token=hunter22!".into()), "token=***!");
        assert_eq!(m.mask("hunter22hunter22".into()), "******");
        assert_eq!(m.mask("  AAAABBBB".into()), "  ***");
        assert_eq!(m.mask("nothing here".into()), "nothing here");
        let nested = Masker::new(["abcd", "xxabcdxx"]);
        assert_eq!(nested.mask("xxabcdxx abcd".into()), "*** ***");
    }

    #[test]
    fn names_and_values_are_checked() {
        assert!(validate_name("DEPLOY_TOKEN").is_ok());
        for bad in ["", "1A", "A-B", "KILN_X", &"A".repeat(MAX_NAME_LEN + 1)] {
            assert_eq!(validate_name(bad).unwrap_err().field, "name", "{bad}");
        }
        assert!(validate_value("abcd").is_ok());
        for bad in ["abc", "ab\0cd", &"x".repeat(MAX_VALUE_LEN + 1)] {
            assert_eq!(validate_value(bad).unwrap_err().field, "value");
        }
    }
}
