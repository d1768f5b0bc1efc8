//! The document indexed for a build: the build document plus what reports need (folder
//! path, the parent job of PR and branch jobs, queue wait time, branch and sha).

use chrono::Datelike;
use kiln_model::{BuildDocument, Name};
use serde_json::{json, Value};

/// The index template installed at start-up: explicit types for everything reports filter,
/// aggregate or sort on; parameters mapped as keywords whatever their names.
pub(crate) fn template(index: &str) -> Value {
    // Built apart: one `json!` of the whole template exceeds the macro's recursion limit.
    let trigger = json!({"properties": {
        "kind": {"type": "keyword"},
        "by": {"type": "keyword"},
        "sha": {"type": "keyword"},
        "ref": {"type": "keyword"},
        "rebuild_of": {"type": "long"},
        "upstream": {"properties": {
            "job": {"type": "keyword"},
            "number": {"type": "long"},
            "status": {"type": "keyword"},
            "depth": {"type": "integer"}
        }}
    }});
    let steps = json!({"properties": {
        "name": {"type": "keyword"},
        "status": {"type": "keyword"},
        "exit_code": {"type": "integer"},
        "duration_ms": {"type": "long"},
        "started_at": {"type": "date"},
        "finished_at": {"type": "date"},
        "attempts": {"type": "integer"}
    }});
    let downstream_builds = json!({"properties": {
        "job": {"type": "keyword"},
        "number": {"type": "long"}
    }});
    let keep = json!({"properties": {
        "by": {"type": "keyword"},
        "at": {"type": "date"},
        "reason": {"type": "text"}
    }});
    let matrix = json!({"properties": {
        "group": {"type": "long"},
        "index": {"type": "integer"},
        "size": {"type": "integer"},
        "cell": {"type": "object"}
    }});
    json!({
        "index_patterns": [format!("{index}*")],
        "priority": 100,
        "template": {
            "mappings": {
                "dynamic_templates": [
                    {"parameters": {"path_match": "parameters.*", "mapping": {"type": "keyword"}}},
                    {"matrix_cell": {"path_match": "matrix.cell.*", "mapping": {"type": "keyword"}}}
                ],
                "properties": {
                    "key": {"type": "keyword"},
                    "job": {"type": "keyword"},
                    "number": {"type": "long"},
                    "folder": {"type": "keyword"},
                    "folder_path": {"type": "keyword"},
                    "parent_job": {"type": "keyword"},
                    "status": {"type": "keyword"},
                    "node": {"type": "keyword"},
                    "queue": {"type": "keyword"},
                    "concurrency_group": {"type": "keyword"},
                    "attempt": {"type": "integer"},
                    "trigger": trigger,
                    "branch": {"type": "keyword"},
                    "sha": {"type": "keyword"},
                    "queued_at": {"type": "date"},
                    "started_at": {"type": "date"},
                    "finished_at": {"type": "date"},
                    "duration_ms": {"type": "long"},
                    "queue_wait_ms": {"type": "long"},
                    "exit_code": {"type": "integer"},
                    "reason": {"type": "text"},
                    "storage_path": {"type": "keyword"},
                    "schema_version": {"type": "integer"},
                    "cancel_requested": {"type": "boolean"},
                    "downstream_builds": downstream_builds,
                    "artifacts_expired_at": {"type": "date"},
                    "keep": keep,
                    "matrix": matrix,
                    "parameters": {"type": "object"},
                    "steps": steps
                }
            }
        }
    })
}

/// The index a build goes to.
pub(crate) fn index_for(prefix: &str, per_month: bool, doc: &BuildDocument) -> String {
    if per_month {
        format!(
            "{prefix}-{:04}.{:02}",
            doc.queued_at.year(),
            doc.queued_at.month()
        )
    } else {
        prefix.to_owned()
    }
}

/// The indexed document.
pub(crate) fn document(doc: &BuildDocument, folder_path: &[Name]) -> Value {
    let mut v = serde_json::to_value(doc).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("key".into(), json!(doc.build_ref().key()));
        o.insert(
            "folder_path".into(),
            json!(folder_path
                .iter()
                .map(Name::as_str)
                .collect::<Vec<_>>()
                .join("/")),
        );
        o.insert("parent_job".into(), json!(doc.job.base()));
        o.insert(
            "queue_wait_ms".into(),
            json!(doc
                .started_at
                .map(|s| (s - doc.queued_at).num_milliseconds().max(0))),
        );
        o.insert("branch".into(), json!(doc.trigger.git_ref));
        o.insert("sha".into(), json!(doc.trigger.sha));
    }
    v
}
