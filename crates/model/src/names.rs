//! Validated names. Every Redis key and every storage path is built from these types only,
//! so a name that could collide in the key layout or escape the storage root never gets in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest name a user may choose (folders, jobs, queues).
pub const MAX_NAME_LEN: usize = 63;
/// Longest derived job name (`<base>_pr<N>`, `<base>_branch-<slug>`).
pub const MAX_JOB_NAME_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters, got {len}")]
    TooLong { len: usize, max: usize },
    #[error("must start with a letter or digit")]
    BadStart,
    #[error("may contain only letters, digits, '.' and '-' (found {0:?})")]
    BadChar(char),
    #[error("is not a valid derived job name (expected <base>_pr<N> or <base>_branch-<slug>)")]
    BadDerived,
    #[error("must be a positive integer")]
    BadNumber,
}

/// A name a user chooses: `[A-Za-z0-9][A-Za-z0-9.-]{0,62}`.
///
/// No `_` (the key separator) and no `/` (the path separator): this is what makes the
/// spec's key layout unambiguous and storage paths safe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        validate_plain(s, MAX_NAME_LEN)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_plain(s: &str, max: usize) -> Result<(), NameError> {
    let first = s.chars().next().ok_or(NameError::Empty)?;
    if s.len() > max {
        return Err(NameError::TooLong { len: s.len(), max });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-'))
    {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

/// A job's name: a user-chosen [`Name`], or one derived from it by the GitHub integration
/// (`<base>_pr<N>`, `<base>_branch-<slug>`). The derived forms are the only names that hold
/// a `_`, and the part after it never parses as a build number or as `recent`, so
/// `job_<name>_<n>` and `job_<name>_recent` stay unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobName(String);

impl JobName {
    /// Parses a user-chosen name or a derived one.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s.split_once('_') {
            None => Name::parse(s).map(|n| Self(n.0)),
            Some((base, suffix)) => {
                Name::parse(base)?;
                if s.len() > MAX_JOB_NAME_LEN {
                    return Err(NameError::TooLong {
                        len: s.len(),
                        max: MAX_JOB_NAME_LEN,
                    });
                }
                let derived_ok = if let Some(n) = suffix.strip_prefix("pr") {
                    BuildNumber::from_str(n).is_ok() && n == n.trim_start_matches('0')
                } else if suffix.len() > "branch-".len() && suffix.starts_with("branch-") {
                    validate_plain(suffix, MAX_JOB_NAME_LEN).is_ok()
                } else {
                    false
                };
                if derived_ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(NameError::BadDerived)
                }
            }
        }
    }

    /// Parses only a name a user may choose (no derived forms).
    pub fn parse_user(s: &str) -> Result<Self, NameError> {
        Name::parse(s).map(|n| Self(n.0))
    }

    /// A user-chosen name is always a valid job name.
    pub fn from_name(name: &Name) -> Self {
        Self(name.0.clone())
    }

    /// The job that runs a repository's pull request `number`.
    pub fn pull_request(base: &Name, number: u64) -> Self {
        Self(format!("{}_pr{number}", base.as_str()))
    }

    /// The job that runs pushes to `branch`; `None` when the branch name is too long.
    pub fn branch(base: &Name, branch: &str) -> Option<Self> {
        let name = format!("{}_branch-{}", base.as_str(), branch_slug(branch));
        (name.len() <= MAX_JOB_NAME_LEN && !branch.is_empty()).then_some(Self(name))
    }

    /// The user-chosen job this one was derived from, if it is a derived job.
    pub fn base(&self) -> Option<Name> {
        self.0.split_once('_').map(|(b, _)| Name(b.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps any branch name injectively onto `[A-Za-z0-9.-]`: letters, digits and `.` stay,
/// `/` becomes `--`, `-` becomes `-d`, `_` becomes `-u`, and every other byte `-xHH`.
/// Each escape starts with `-` followed by a distinct marker, so no two branches share
/// a slug (`feature/x` -> `feature--x`, `feature-x` -> `feature-dx`).
pub fn branch_slug(branch: &str) -> String {
    let mut out = String::with_capacity(branch.len());
    for c in branch.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' => out.push(c),
            '/' => out.push_str("--"),
            '-' => out.push_str("-d"),
            '_' => out.push_str("-u"),
            other => {
                let mut buf = [0u8; 4];
                for b in other.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("-x{b:02x}"));
                }
            }
        }
    }
    out
}

/// A build number: positive, taken from the job's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BuildNumber(pub u64);

impl FromStr for BuildNumber {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NameError::BadNumber);
        }
        match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Self(n)),
            _ => Err(NameError::BadNumber),
        }
    }
}

impl fmt::Display for BuildNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! string_newtype {
    ($t:ident, $parse:path) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $parse(s)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?} {e}")))
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_newtype!(Name, Name::parse);
string_newtype!(JobName, JobName::parse);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_follow_the_spec_pattern() {
        for ok in ["a", "A1", "team-a", "v1.2", &"x".repeat(63)] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a_b",
            "a/b",
            "a b",
            "ä",
            "..",
            &"x".repeat(64),
        ] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users_cannot_choose_derived_names() {
        assert!(JobName::parse_user("app_pr25").is_err());
        assert!(JobName::parse("app_pr25").is_ok());
        assert!(JobName::parse("app_branch-main").is_ok());
    }

    #[test]
    fn derived_names_never_look_like_build_keys_or_recent() {
        for bad in [
            "app_recent",
            "app_3",
            "app_pr",
            "app_pr0",
            "app_pr01",
            "app_branch-",
            "a_b_c",
            "app_pr2_3",
            "_pr1",
        ] {
            assert!(JobName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branch_slugs_are_collision_free() {
        let branches = [
            "feature/x",
            "feature-x",
            "feature_x",
            "feature--x",
            "feature-dx",
            "feature.x",
            "Feature/x",
            "fé",
            "f-xc3-xa9",
            "-x",
            "x-",
            "/x",
            "0-dx",
            "a/-b",
            "a-/b",
        ];
        let mut seen = std::collections::HashMap::new();
        for b in branches {
            let s = branch_slug(b);
            assert!(
                validate_plain(&format!("branch-{s}"), 500).is_ok(),
                "{b} -> {s}"
            );
            if let Some(prev) = seen.insert(s.clone(), b) {
                panic!("{prev:?} and {b:?} share slug {s}");
            }
        }
        let base = Name::parse("app").unwrap();
        let job = JobName::branch(&base, "feature/x").unwrap();
        assert_eq!(job.as_str(), "app_branch-feature--x");
        assert_eq!(JobName::parse(job.as_str()).unwrap(), job);
        assert!(JobName::branch(&base, &"b".repeat(300)).is_none());
    }

    #[test]
    fn build_numbers_are_positive_integers() {
        assert_eq!("7".parse::<BuildNumber>().unwrap(), BuildNumber(7));
        for bad in ["0", "-1", "+1", "1.0", "", "a", "99999999999999999999999"] {
            assert!(bad.parse::<BuildNumber>().is_err(), "{bad}");
        }
    }
}
