//! Step processes: each runs in its own process group, so a timeout or cancel kills the
//! whole tree, and dies with the worker, so a requeued build never overlaps an orphan of its
//! earlier attempt.
//!
//! The worker holds the write end of one pipe (the *lifeline*) for its whole life and
//! never writes to it; every step's guard shell gets the read end as its stdin and hands it
//! to a small watcher in the step's process group, which blocks reading it (the step itself
//! reads `/dev/null`): when the worker exits, however it exits, the kernel closes the write
//! end, the read returns, and the watcher kills the group. Unlike
//! `PR_SET_PDEATHSIG` this needs no code between fork and exec, so the standard library
//! starts steps with `posix_spawn` (vfork) instead of copying the worker's page tables for
//! every step, and it cannot miss a worker that died while the step was starting.

use std::collections::BTreeMap;
use std::io::{PipeReader, PipeWriter};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::output::LogSink;
use kiln_model::Stream;

/// The guard around every step, `run` being how the step runs. It hands the lifeline to a
/// watcher in the background, runs the step in a subshell with `/dev/null` as stdin (a
/// subshell's `wait` never waits for the watcher, which is not its child), then kills and
/// reaps the watcher and exits with the step's status. The watcher is never left behind
/// as an orphan, so a worker running as PID 1 without an init collects no zombies.
fn guard(run: &str) -> String {
    format!(
        "exec 3<&0 </dev/null; {{ read x <&3; kill -KILL 0; }} >/dev/null 2>&1 & exec 3<&-; \
         ( {run} ); rc=$?; kill -KILL $! 2>/dev/null; wait $! 2>/dev/null; exit $rc"
    )
}

/// Shells known to run the guard and to take their `-c` options through `set`.
const POSIX_SHELLS: [&str; 7] = ["sh", "bash", "dash", "ash", "ksh", "mksh", "zsh"];

/// Longest line kept whole; longer output (or output without newlines) is split into
/// chunks of this size so memory stays bounded.
pub(crate) const MAX_LINE: usize = 64 * 1024;

pub(crate) struct StepProcess {
    pub(crate) child: Child,
    pub(crate) pgid: i32,
}

/// How step processes are started, decided once from `worker.shell` at start-up.
///
/// With a POSIX shell (the default `sh -e -c`) the guard is that shell and the step's
/// script runs in its subshell with the configured options applied by `set`: one exec per
/// step, like running the shell directly. Any other program (say `python3 -c`) is exec'd
/// from a plain `sh` guard.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    /// Absolute path of the guard shell: the standard library uses `posix_spawn` only when
    /// it need not look the program up in the step's `PATH`.
    guard_shell: PathBuf,
    /// `$0` of the guard, so the step's error messages name the configured shell.
    arg0: String,
    guard: String,
    /// Arguments between `$0` and the step's script: the configured shell when it is
    /// exec'd by the guard, nothing when the guard runs the script itself.
    exec_prefix: Vec<String>,
}

impl Launcher {
    /// Checks `shell` (program, options..., ending in the flag that takes a script) and
    /// finds the programs on the worker's `PATH`.
    pub(crate) fn new(shell: &[String]) -> Result<Self, String> {
        let Some((program, rest)) = shell.split_first() else {
            return Err("must name a program".into());
        };
        let name = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let posix_options = rest
            .split_last()
            .filter(|(last, _)| *last == "-c" && POSIX_SHELLS.contains(&name))
            .and_then(|(_, options)| set_options(options));
        if let Some(options) = posix_options {
            return Ok(Self {
                guard_shell: find_program(program)?,
                arg0: name.to_owned(),
                guard: guard(&format!("eval \"set {options}--;$1\"")),
                exec_prefix: Vec::new(),
            });
        }
        find_program(program)?;
        Ok(Self {
            guard_shell: find_program("sh")?,
            arg0: "kiln-step".into(),
            guard: guard("exec \"$@\""),
            exec_prefix: shell.to_vec(),
        })
    }

    /// Starts `script` in a new process group, in `cwd`, with exactly `env` (the worker's
    /// own `KILN_*` settings are never passed on).
    pub(crate) fn spawn(
        &self,
        script: &str,
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> std::io::Result<StepProcess> {
        let child = Command::new(&self.guard_shell)
            .arg("-c")
            .arg(&self.guard)
            .arg(&self.arg0)
            .args(&self.exec_prefix)
            .arg(script)
            .current_dir(cwd)
            .env_clear()
            .envs(env)
            .stdin(lifeline()?)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false)
            .spawn()?;
        let pgid = child
            .id()
            .map(|p| p as i32)
            .ok_or_else(|| std::io::Error::other("step exited before it was tracked"))?;
        Ok(StepProcess { child, pgid })
    }
}

/// The shell options as arguments of `set` (each followed by a space), or `None` when an
/// option is not one `set` takes: such a shell is exec'd by the guard instead.
fn set_options(options: &[String]) -> Option<String> {
    let mut out = String::new();
    let mut it = options.iter();
    while let Some(o) = it.next() {
        let (sign, flags) = o.split_at_checked(1)?;
        if sign != "-" && sign != "+" {
            return None;
        }
        if flags == "o" {
            let long = it.next()?;
            if long.is_empty() || !long.bytes().all(|b| b.is_ascii_lowercase()) {
                return None;
            }
            out.push_str(&format!("{o} {long} "));
        } else if !flags.is_empty() && flags.bytes().all(|b| b"aefhmnuvxC".contains(&b)) {
            out.push_str(o);
            out.push(' ');
        } else {
            return None;
        }
    }
    Some(out)
}

/// `program` as an absolute path: as given when it names a path, else the first
/// executable of that name on the worker's `PATH`.
fn find_program(program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            std::path::absolute(&p).map_err(|e| format!("{program}: {e}"))
        } else {
            Err(format!("{program} is not an executable file"))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_absolute() && executable(p))
        .ok_or_else(|| format!("{program} was not found on PATH"))
}

/// A new handle on the lifeline's read end, for one step's stdin.
fn lifeline() -> std::io::Result<PipeReader> {
    static LIFELINE: OnceLock<(PipeReader, PipeWriter)> = OnceLock::new();
    if let Some((reader, _)) = LIFELINE.get() {
        return reader.try_clone();
    }
    let pipe = std::io::pipe()?;
    LIFELINE.get_or_init(|| pipe).0.try_clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn a_posix_shell_runs_the_script_itself_with_its_options_set() {
        let l = Launcher::new(&shell(&["bash", "-e", "-o", "pipefail", "-c"])).expect("bash");
        assert!(l.exec_prefix.is_empty());
        assert!(l.guard.contains("( eval \"set -e -o pipefail --;$1\" )"));
        assert_eq!(l.arg0, "bash");
        assert!(l.guard_shell.is_absolute());
    }

    #[test]
    fn other_programs_and_unknown_options_are_execd_by_the_guard() {
        for words in [
            &["env", "sh", "-c"][..],
            &["sh", "-l", "-c"],
            &["sh", "--norc", "-c"],
            &["sh", "-o", "Bad", "-c"],
            &["sh", "-e"],
        ] {
            let l = Launcher::new(&shell(words)).expect("sh and env are on PATH");
            assert_eq!(l.exec_prefix, shell(words), "{words:?}");
            assert!(l.guard.contains("( exec \"$@\" )"));
        }
    }

    #[test]
    fn a_missing_program_is_refused_at_start_up() {
        let e = Launcher::new(&shell(&["no-such-shell-kiln", "-c"])).expect_err("missing");
        assert!(e.contains("not found on PATH"), "{e}");
        assert!(Launcher::new(&[]).is_err());
    }

    #[tokio::test]
    async fn another_program_is_execd_with_the_script_and_its_exit_code_comes_back() {
        let l = Launcher::new(&shell(&["env", "sh", "-c"])).expect("env");
        assert_eq!(l.exec_prefix, shell(&["env", "sh", "-c"]));
        let mut p = l
            .spawn(
                "if read x; then exit 5; fi; exit 4",
                &std::env::temp_dir(),
                &BTreeMap::new(),
            )
            .expect("spawn");
        let status = p.child.wait().await.expect("wait");
        assert_eq!(status.code(), Some(4));
        kill_group(p.pgid);
    }

    #[tokio::test]
    async fn a_steps_wait_does_not_wait_for_the_watcher_and_nothing_is_left_behind() {
        let l = Launcher::new(&shell(&["sh", "-e", "-c"])).expect("sh");
        let mut p = l
            .spawn(
                "sleep 0.1 & wait; exit 3",
                &std::env::temp_dir(),
                &BTreeMap::new(),
            )
            .expect("spawn");
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), p.child.wait())
            .await
            .expect("`wait` in the step returned")
            .expect("wait");
        assert_eq!(status.code(), Some(3));
        let group_alive = std::process::Command::new("kill")
            .args(["-0", "--", &format!("-{}", p.pgid)])
            .stderr(Stdio::null())
            .status()
            .expect("kill -0");
        assert!(!group_alive.success(), "the guard reaped its watcher");
    }

    #[tokio::test]
    async fn a_step_sees_no_guard_arguments_nor_stdin_and_stops_under_set_e() {
        let l = Launcher::new(&shell(&["sh", "-e", "-c"])).expect("sh");
        let dir = std::env::temp_dir();
        let mut p = l
            .spawn(
                "[ $# = 0 ] || exit 3; [ \"$0\" = sh ] || exit 4; if read x; then exit 5; fi; false; exit 9",
                &dir,
                &BTreeMap::new(),
            )
            .expect("spawn");
        let status = p.child.wait().await.expect("wait");
        assert_eq!(status.code(), Some(1), "set -e stops at `false`");
        kill_group(p.pgid);
    }
}
