//! Step processes: each runs in its own process group, so a timeout or cancel kills the
//! whole tree, and dies with the worker, so a requeued build never overlaps an orphan of its
//! earlier attempt.
//!
//! Dying with the worker is left to the kernel. For every step the worker opens a pipe, the
//! step's *lifeline*, and keeps both ends itself; each end is armed (`O_ASYNC` with
//! `F_SETOWN` and `F_SETSIG`) to send SIGKILL to the step's process group when the pipe's
//! other side loses its last holder. When the worker exits, however it exits, the kernel
//! closes its files: whichever end goes first, the other one fires. No helper process runs
//! beside the step and nothing runs between fork and exec, so a step costs one `posix_spawn`
//! of the configured shell, like running that shell by hand (a watcher shell per step, the
//! previous design, cost about as much CPU again; see docs/performance.md).

use std::collections::BTreeMap;
use std::io::{PipeReader, PipeWriter};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::output::LogSink;
use kiln_model::Stream;

/// Longest line kept whole; longer output (or output without newlines) is split into
/// chunks of this size so memory stays bounded.
pub(crate) const MAX_LINE: usize = 64 * 1024;

pub(crate) struct StepProcess {
    pub(crate) child: Child,
    pub(crate) pgid: i32,
    /// Held until the step is over; dropping it signals a group that is already gone.
    _lifeline: Lifeline,
}

/// How step processes are started, decided once from `worker.shell` at start-up.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    /// Absolute path of the shell: the standard library uses `posix_spawn` only when it
    /// need not look the program up in the step's `PATH`.
    program: PathBuf,
    /// `$0` of the step, the shell's name as configured, so its error messages read as usual.
    arg0: String,
    /// The shell's arguments before the script (`-e -c`).
    args: Vec<String>,
}

impl Launcher {
    /// Checks `shell` (program, options..., ending in the flag that takes a script) and
    /// finds the program on the worker's `PATH`.
    pub(crate) fn new(shell: &[String]) -> Result<Self, String> {
        let Some((program, args)) = shell.split_first() else {
            return Err("must name a program".into());
        };
        Ok(Self {
            program: find_program(program)?,
            arg0: program.clone(),
            args: args.to_vec(),
        })
    }

    /// Starts `script` in a new process group, in `cwd`, with exactly `env` (the worker's
    /// own `KILN_*` settings are never passed on) and `/dev/null` as stdin.
    pub(crate) fn spawn(
        &self,
        script: &str,
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> std::io::Result<StepProcess> {
        let lifeline = Lifeline::new()?;
        let child = Command::new(&self.program)
            .arg0(&self.arg0)
            .args(&self.args)
            .arg(script)
            .current_dir(cwd)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false)
            .spawn()?;
        let pgid = child
            .id()
            .map(|p| p as i32)
            .ok_or_else(|| std::io::Error::other("step exited before it was tracked"))?;
        if let Err(e) = lifeline.arm(pgid) {
            kill_group(pgid);
            return Err(e);
        }
        Ok(StepProcess {
            child,
            pgid,
            _lifeline: lifeline,
        })
    }
}

/// Both ends of one step's lifeline pipe. Only the worker holds them; nothing is ever
/// written to or read from it.
struct Lifeline {
    read: PipeReader,
    write: PipeWriter,
}

impl Lifeline {
    fn new() -> std::io::Result<Self> {
        let (read, write) = std::io::pipe()?;
        Ok(Self { read, write })
    }

    /// From now on, closing either end while the other is open sends SIGKILL to process
    /// group `pgid`. Signals go to that group as the kernel knew it when armed, never to a
    /// later group that happens to reuse the number.
    #[cfg(target_os = "linux")]
    fn arm(&self, pgid: i32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        /// `F_SETSIG` from `<asm-generic/fcntl.h>` (x86-64, arm64...); the libc crate
        /// does not export it.
        const F_SETSIG: libc::c_int = 10;
        for fd in [self.read.as_raw_fd(), self.write.as_raw_fd()] {
            #[expect(unsafe_code, reason = "fcntl has no safe wrapper in std")]
            // SAFETY: fcntl on a descriptor this struct owns, with integer arguments only.
            let armed = unsafe {
                libc::fcntl(fd, libc::F_SETOWN, -pgid) != -1
                    && libc::fcntl(fd, F_SETSIG, libc::SIGKILL) != -1
                    && {
                        let flags = libc::fcntl(fd, libc::F_GETFL);
                        flags != -1 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) != -1
                    }
            };
            if !armed {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Only Linux lets a pipe's closing send SIGKILL: elsewhere (a developer's laptop) a step
    /// outlives a worker that is killed outright, though not one that shuts down cleanly.
    #[cfg(not(target_os = "linux"))]
    fn arm(&self, _pgid: i32) -> std::io::Result<()> {
        let _ = (&self.read, &self.write);
        Ok(())
    }
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
    use std::time::Duration;

    fn shell(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    /// Whether a process of group `pgid` still runs (zombies waiting for their reaper
    /// do not count).
    fn group_alive(pgid: i32) -> bool {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .any(|stat| {
                let mut fields = stat
                    .rsplit_once(')')
                    .map_or("", |(_, rest)| rest)
                    .split_whitespace();
                let state = fields.next();
                let pgrp = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
                pgrp == Some(pgid) && state != Some("Z")
            })
    }

    #[test]
    fn a_missing_program_is_refused_at_start_up() {
        let e = Launcher::new(&shell(&["no-such-shell-kiln", "-c"])).expect_err("missing");
        assert!(e.contains("not found on PATH"), "{e}");
        assert!(Launcher::new(&[]).is_err());
    }

    #[tokio::test]
    async fn a_step_runs_under_the_shell_with_its_options_no_arguments_and_no_stdin() {
        let l = Launcher::new(&shell(&["sh", "-e", "-c"])).expect("sh");
        let mut p = l
            .spawn(
                "[ $# = 0 ] || exit 3; [ \"$0\" = sh ] || exit 4; if read x; then exit 5; fi; false; exit 9",
                &std::env::temp_dir(),
                &BTreeMap::new(),
            )
            .expect("spawn");
        let status = p.child.wait().await.expect("wait");
        assert_eq!(status.code(), Some(1), "set -e stops at `false`");
        kill_group(p.pgid);
    }

    #[tokio::test]
    async fn another_program_gets_the_script_and_its_exit_code_comes_back() {
        let l = Launcher::new(&shell(&["env", "sh", "-c"])).expect("env");
        let mut p = l
            .spawn("exit 4", &std::env::temp_dir(), &BTreeMap::new())
            .expect("spawn");
        let status = p.child.wait().await.expect("wait");
        assert_eq!(status.code(), Some(4));
        kill_group(p.pgid);
    }

    /// What happens to a running step when its worker's files are closed by the kernel.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn closing_a_steps_lifeline_kills_its_whole_group() {
        let l = Launcher::new(&shell(&["sh", "-c"])).expect("sh");
        let p = l
            .spawn(
                "sleep 300 & sleep 301",
                &std::env::temp_dir(),
                &BTreeMap::new(),
            )
            .expect("spawn");
        let StepProcess {
            mut child,
            pgid,
            _lifeline,
        } = p;
        assert!(group_alive(pgid));
        drop(_lifeline);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the step was killed")
            .expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while group_alive(pgid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!group_alive(pgid), "the background sleep was killed too");
    }
}
