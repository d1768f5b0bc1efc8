//! Step processes: each runs in its own process group, so a timeout or cancel kills the
//! whole tree, and dies with the worker, so a requeued build never overlaps an orphan of its
//! earlier attempt.
//!
//! `PR_SET_PDEATHSIG` only reaches the direct child, so the child is a tiny `sh` guard that
//! traps the signal and kills its whole process group (the step and everything it started)
//! before exiting.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::output::LogSink;
use kiln_model::Stream;

/// Runs `"$@"` in the background and waits for it; when the worker dies the kernel sends
/// SIGTERM (PDEATHSIG) and the trap kills the group. `kill -KILL 0` includes the guard.
const GUARD: &str = "trap 'kill -KILL 0' TERM HUP INT\n\"$@\" &\nwait $!\n";

/// Longest line kept whole; longer output (or output without newlines) is split into
/// chunks of this size so memory stays bounded.
pub(crate) const MAX_LINE: usize = 64 * 1024;

pub(crate) struct StepProcess {
    pub(crate) child: Child,
    pub(crate) pgid: i32,
}

/// Starts `program args...` under the guard in a new process group, in `cwd`, with exactly
/// `env` (the worker's own `KILN_*` settings are never passed on).
pub(crate) fn spawn(
    program: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
) -> std::io::Result<StepProcess> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(GUARD)
        .arg("kiln-step")
        .args(program)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let parent = std::process::id();
    #[expect(
        unsafe_code,
        reason = "pre_exec is the only way to set PDEATHSIG on the child"
    )]
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The worker may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other(
                    "worker exited before the step started",
                ));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pgid = child
        .id()
        .map(|p| p as i32)
        .ok_or_else(|| std::io::Error::other("step exited before it was tracked"))?;
    Ok(StepProcess { child, pgid })
}

/// Kills every process of the step's group.
pub(crate) fn kill_group(pgid: i32) {
    #[expect(unsafe_code, reason = "killpg has no safe wrapper in std")]
    // SAFETY: killpg takes plain integers and has no memory effects.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// Reads a pipe to its end, sending each line (or each `MAX_LINE` chunk of a longer one)
/// to the log. Never blocks the child on a full pipe: reading is continuous.
pub(crate) async fn pump(mut pipe: impl AsyncRead + Unpin, stream: Stream, sink: LogSink) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            pending.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            sink.line(stream, take_line(&mut pending)).await;
        }
        pending.extend_from_slice(rest);
        while pending.len() >= MAX_LINE {
            let tail = pending.split_off(MAX_LINE);
            let head = std::mem::replace(&mut pending, tail);
            sink.line(stream, String::from_utf8_lossy(&head).into_owned())
                .await;
        }
    }
    if !pending.is_empty() {
        sink.line(stream, take_line(&mut pending)).await;
    }
}

fn take_line(pending: &mut Vec<u8>) -> String {
    if pending.last() == Some(&b'\r') {
        pending.pop();
    }
    let s = String::from_utf8_lossy(pending).into_owned();
    pending.clear();
    s
}
