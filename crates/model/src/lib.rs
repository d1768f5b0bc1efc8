//! The vocabulary every Kiln service shares: validated names, the Redis key and channel
//! layout, the job definition, the build document, and the messages that travel over Redis.
//!
//! This crate does no I/O, so producers and consumers of every key compile against one
//! definition and cannot drift apart.

pub mod build;
pub mod events;
pub mod job;
pub mod keys;
pub mod matrix;
pub mod names;
pub mod node;
pub mod output;
pub mod schedule;
pub mod secret;
pub mod storage;

pub use build::{
    BuildDocument, BuildLink, BuildStatus, Keep, StepResult, Trigger, TriggerKind, Upstream,
};
pub use events::{BuildEvent, BuildEventKind};
pub use job::{
    Downstream, GithubSource, JobDefinition, Parameter, Repository, Retention, Step, StepWhen,
};
pub use keys::{BuildRef, Entry};
pub use matrix::{Matrix, MatrixCell};
pub use names::{BuildNumber, JobName, Name, NameError};
pub use node::NodeInfo;
pub use output::{LogLine, OutputMessage, Stream};
pub use schedule::Schedule;
pub use secret::{Masker, SecretInfo, StoredSecret};

/// Version of the JSON documents this code writes. Readers accept documents without the
/// field (written by the first release) and any version up to this one.
pub const SCHEMA_VERSION: u32 = 1;

/// Default for `schema_version` on documents that predate the field.
pub(crate) fn schema_version() -> u32 {
    SCHEMA_VERSION
}
