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
use std::ffi::OsString;
use std::io::{self, PipeReader, PipeWriter};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::output::LogSink;
use kiln_model::Stream;

/// Longest line kept whole; longer output (or output without newlines) is split into
/// chunks of this size so memory stays bounded.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A running step: its process group, its output pipes (taken by the pumps) and how its
/// end is learnt.
pub(crate) struct StepProcess {
    pub(crate) pgid: i32,
    pub(crate) stdout: Option<pipe::Receiver>,
    pub(crate) stderr: Option<pipe::Receiver>,
    exit: Exit,
    status: Option<ExitStatus>,
    /// Held until the step is over; dropping it signals a group that is already gone.
    /// (`None` only in a test that cuts it.)
    lifeline: Option<Lifeline>,
}

/// How the worker learns that a step's process ended. Not through tokio's child handling:
/// that reacts to every SIGCHLD by polling each running step, and cost the worker a fifth
/// of its CPU per build in `make bench` together with the environment copies below.
enum Exit {
    /// Linux: the process's pidfd turns readable when it ends, seen by the worker's own
    /// event loop; no signal handler, no thread.
    #[cfg(target_os = "linux")]
    Pidfd {
        child: Option<Child>,
        ended: tokio::io::unix::AsyncFd<OwnedFd>,
    },
    /// Elsewhere, or on a kernel without pidfds (before 5.3): a blocking-pool thread waits.
    Thread(JoinHandle<io::Result<ExitStatus>>),
}

impl StepProcess {
    /// Waits for the step's process to end (not for the rest of its group). Can be
    /// cancelled and called again.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.exit.wait().await?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for StepProcess {
    /// A step dropped before it was waited for (its build's task was aborted) is reaped
    /// by the blocking pool once it ends, so no zombie is left behind.
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let (None, Exit::Pidfd { child, .. }) = (self.status, &mut self.exit) {
            if let (Some(mut c), Ok(rt)) = (child.take(), tokio::runtime::Handle::try_current()) {
                drop(rt.spawn_blocking(move || c.wait()));
            }
        }
    }
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
    /// The worker's own environment without its `KILN_*` settings (which may hold
    /// secrets): every step starts from it. Read once, not per step.
    inherited: Vec<(OsString, OsString)>,
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
            inherited: std::env::vars_os()
                .filter(|(k, _)| !k.as_encoded_bytes().starts_with(b"KILN_"))
                .collect(),
        })
    }

    /// Starts `script` in a new process group, in `cwd`, with the worker's environment
    /// (less its `KILN_*` settings) overlaid by `env`, and `/dev/null` as stdin.
    pub(crate) fn spawn(
        &self,
        script: &str,
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> io::Result<StepProcess> {
        let lifeline = Lifeline::new()?;
        let mut child = Command::new(&self.program)
            .arg0(&self.arg0)
            .args(&self.args)
            .arg(script)
            .current_dir(cwd)
            .env_clear()
            .envs(self.inherited.iter().map(|(k, v)| (k, v)))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let pgid = child.id() as i32;
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let mut step = StepProcess {
            pgid,
            stdout: None,
            stderr: None,
            exit: Exit::of(child),
            status: None,
            lifeline: None,
        };
        // From here on an error kills the group; dropping `step` reaps it.
        let armed = lifeline.arm(pgid).and_then(|()| {
            step.lifeline = Some(lifeline);
            step.stdout = stdout.map(pipe::Receiver::from_owned_fd).transpose()?;
            step.stderr = stderr.map(pipe::Receiver::from_owned_fd).transpose()?;
            Ok(())
        });
        if let Err(e) = armed {
            kill_group(pgid);
            return Err(e);
        }
        Ok(step)
    }
}

impl Exit {
    fn of(child: Child) -> Self {
        #[cfg(target_os = "linux")]
        match pidfd(child.id()) {
            Ok(ended) => {
                return Exit::Pidfd {
                    child: Some(child),
                    ended,
                }
            }
            Err(e) => tracing::debug!(error = %e, "no pidfd; a thread waits for the step"),
        }
        Self::by_thread(child)
    }

    fn by_thread(mut child: Child) -> Self {
        Exit::Thread(tokio::task::spawn_blocking(move || child.wait()))
    }

    /// The process's exit status, once: cancel-safe until it returns.
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            #[cfg(target_os = "linux")]
            Exit::Pidfd { child, ended } => loop {
                let Some(c) = child.as_mut() else {
                    return Err(io::Error::other("step process already reaped"));
                };
                if let Some(status) = c.try_wait()? {
                    return Ok(status);
                }
                ended.readable().await?.clear_ready();
            },
            Exit::Thread(waiter) => waiter.await.map_err(io::Error::other)?,
        }
    }
}

/// A pidfd for process `pid`, registered with the worker's event loop. `pid` is a child
/// of this worker not yet waited for, so its number cannot have been reused.
#[cfg(target_os = "linux")]
fn pidfd(pid: u32) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    use std::os::fd::FromRawFd;
    #[expect(unsafe_code, reason = "pidfd_open has no wrapper in std or libc")]
    // SAFETY: pidfd_open takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[expect(
        unsafe_code,
        reason = "owning the kernel's new descriptor; registering it"
    )]
    // SAFETY: `fd` is a fresh descriptor nobody else owns; the `OwnedFd` keeps it open and
    // unchanged for as long as the `AsyncFd` holds it, as registration requires.
    unsafe {
        let fd = OwnedFd::from_raw_fd(fd as i32);
        Ok(tokio::io::unix::AsyncFd::register_with_interest(
            fd,
            tokio::io::Interest::READABLE,
        )?)
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
pub(crate) async fn pump(mut pipe: pipe::Receiver, stream: Stream, sink: LogSink) {
    // Read into capacity that is never zeroed: most steps print little or nothing, and
    // clearing 64 KiB per pipe per step showed in the worker's profile.
    let mut buf: Vec<u8> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        buf.clear();
        buf.reserve(64 * 1024);
        match pipe.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut rest = &buf[..];
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
        let status = p.wait().await.expect("wait");
        assert_eq!(status.code(), Some(1), "set -e stops at `false`");
        kill_group(p.pgid);
    }

    #[tokio::test]
    async fn another_program_gets_the_script_and_its_exit_code_comes_back() {
        let l = Launcher::new(&shell(&["env", "sh", "-c"])).expect("env");
        let mut p = l
            .spawn("exit 4", &std::env::temp_dir(), &BTreeMap::new())
            .expect("spawn");
        let status = p.wait().await.expect("wait");
        assert_eq!(status.code(), Some(4));
        kill_group(p.pgid);
    }

    #[tokio::test]
    async fn without_a_pidfd_a_thread_waits_for_the_step() {
        let child = Command::new("sh")
            .args(["-c", "sleep 0.05; exit 7"])
            .spawn()
            .expect("spawn");
        let status = Exit::by_thread(child).wait().await.expect("wait");
        assert_eq!(status.code(), Some(7));
    }

    /// A zombie of a step whose build task was dropped would stay in the process table for
    /// the worker's whole life.
    #[tokio::test]
    async fn a_step_dropped_before_its_end_is_reaped_when_it_ends() {
        let l = Launcher::new(&shell(&["sh", "-c"])).expect("sh");
        let p = l
            .spawn("sleep 0.05", &std::env::temp_dir(), &BTreeMap::new())
            .expect("spawn");
        let stat = format!("/proc/{}/stat", p.pgid);
        drop(p);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&stat).exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !std::path::Path::new(&stat).exists(),
            "the step was reaped, not left a zombie"
        );
    }

    /// What happens to a running step when its worker's files are closed by the kernel.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn closing_a_steps_lifeline_kills_its_whole_group() {
        let l = Launcher::new(&shell(&["sh", "-c"])).expect("sh");
        let mut p = l
            .spawn(
                "sleep 300 & sleep 301",
                &std::env::temp_dir(),
                &BTreeMap::new(),
            )
            .expect("spawn");
        let pgid = p.pgid;
        assert!(group_alive(pgid));
        p.lifeline = None;
        let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
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
