//! Step processes: each runs in its own process group, so a timeout or cancel kills the
//! whole tree, and dies with the worker, so a requeued build never overlaps an orphan of its
//! earlier attempt.
//!
//! Dying with the worker is left to the kernel. Every running step has a pipe, its
//! *lifeline*, of which the worker keeps both ends; each end is armed (`O_ASYNC` with
//! `F_SETOWN` and `F_SETSIG`) to send SIGKILL to the step's process group when the pipe's
//! other side loses its last holder. When the worker exits, however it exits, the kernel
//! closes its files: whichever end goes first, the other one fires. Lifelines are reused
//! from step to step (re-armed for the new group), and nothing runs beside the step or
//! between fork and exec: a step costs one `posix_spawn` of the configured shell, like
//! running that shell by hand (a watcher shell per step, an earlier design, cost about as
//! much CPU again; see docs/performance.md).
//!
//! The worker calls `posix_spawn` itself rather than through `std::process::Command`: the
//! standard library rebuilds the whole environment (a sorted map, then a C array) for every
//! process whose environment differs from the worker's, which every step's does (its
//! `KILN_*` variables); here the worker's part is made once, at start-up.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, PipeReader, PipeWriter};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

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
    /// Whether the group was killed after the step (`kill_group`); if not, dropping the step
    /// kills it.
    killed: bool,
    /// Held while the step runs, then handed back to `lifelines` for the next step. (`None`
    /// only in a test that cuts it.)
    lifeline: Option<Lifeline>,
    lifelines: Lifelines,
}

/// How the worker learns that a step's process ended. Not through tokio's child handling:
/// that reacts to every SIGCHLD by polling each running step, and cost the worker a fifth
/// of its CPU per build in `make bench` together with the environment copies of the
/// standard library's spawn.
enum Exit {
    /// Linux: the process's pidfd turns readable when it ends, seen by the worker's own
    /// event loop; no signal handler, no thread.
    #[cfg(target_os = "linux")]
    Pidfd(tokio::io::unix::AsyncFd<OwnedFd>),
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
        let status = self.exit.wait(self.pgid).await?;
        self.status = Some(status);
        Ok(status)
    }

    /// Kills every process of the step's group: what the step left behind once it ended,
    /// everything on a timeout or stop.
    pub(crate) fn kill_group(&mut self) {
        kill_group(self.pgid);
        self.killed = true;
    }
}

impl Drop for StepProcess {
    /// A step dropped before its group was killed (its build's task was aborted) is killed
    /// now, and reaped by the blocking pool once it ends, so no zombie is left behind. Its
    /// lifeline goes back to the launcher for the next step.
    fn drop(&mut self) {
        if !self.killed {
            kill_group(self.pgid);
        }
        #[cfg(target_os = "linux")]
        if let (None, Exit::Pidfd(_)) = (self.status, &self.exit) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let pid = self.pgid;
                drop(rt.spawn_blocking(move || wait_blocking(pid)));
            }
        }
        if let (Some(l), Ok(mut pool)) = (self.lifeline.take(), self.lifelines.lock()) {
            pool.push(l);
        }
    }
}

/// Lifelines of steps that ended, ready for the next ones: at most as many as steps ever
/// ran at once.
type Lifelines = Arc<Mutex<Vec<Lifeline>>>;

/// How step processes are started, decided once from `worker.shell` at start-up.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    /// Absolute path of the shell, found on the worker's `PATH` once.
    program: CString,
    /// `$0` of the step (the shell's name as configured, so its error messages read as
    /// usual), then the shell's arguments before the script (`-e -c`).
    argv: Arc<[CString]>,
    /// The worker's own environment without its `KILN_*` settings (which may hold
    /// secrets): every step starts from it. Keys (when UTF-8) and `KEY=value` entries.
    inherited: Arc<[(Option<String>, CString)]>,
    /// `/dev/null`, opened once (close-on-exec) and given to every step as its stdin: a
    /// copy of a descriptor costs the child less than opening the path (session 13).
    stdin: Arc<OwnedFd>,
    lifelines: Lifelines,
}

impl Launcher {
    /// Checks `shell` (program, options..., ending in the flag that takes a script) and
    /// finds the program on the worker's `PATH`.
    pub(crate) fn new(shell: &[String]) -> Result<Self, String> {
        let Some(program) = shell.first() else {
            return Err("must name a program".into());
        };
        let c = |s: &[u8]| CString::new(s).map_err(|_| "must not contain NUL bytes".to_owned());
        let inherited = std::env::vars_os()
            .filter(|(k, _)| !k.as_encoded_bytes().starts_with(b"KILN_"))
            .filter_map(|(k, v)| {
                let entry = [k.as_bytes(), b"=", v.as_bytes()].concat();
                Some((k.into_string().ok(), CString::new(entry).ok()?))
            })
            .collect();
        let stdin = std::fs::File::open("/dev/null")
            .map_err(|e| format!("cannot open /dev/null for the steps' stdin: {e}"))?;
        Ok(Self {
            program: c(find_program(program)?.as_os_str().as_bytes())?,
            argv: shell
                .iter()
                .map(|a| c(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            inherited,
            stdin: Arc::new(stdin.into()),
            lifelines: Arc::default(),
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
        let nul = |_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "NUL byte in a step's command, folder or environment",
            )
        };
        let script = CString::new(script).map_err(nul)?;
        let cwd = CString::new(cwd.as_os_str().as_bytes()).map_err(nul)?;
        let own = env
            .iter()
            .map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).map_err(nul))
            .collect::<io::Result<Vec<_>>>()?;
        let argv = (self.argv.iter().chain([&script]))
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect::<Vec<_>>();
        let envp = (self.inherited.iter())
            .filter(|(k, _)| k.as_ref().is_none_or(|k| !env.contains_key(k)))
            .map(|(_, entry)| entry)
            .chain(&own)
            .map(|e| e.as_ptr())
            .chain([std::ptr::null()])
            .collect::<Vec<_>>();
        let (out_r, out_w) = output_pipe()?;
        let (err_r, err_w) = output_pipe()?;
        let lifeline = self.lifeline()?;
        let pid = spawn::posix_spawn(
            &self.program,
            &argv,
            &envp,
            &cwd,
            [&self.stdin, &out_w, &err_w],
        )?;
        drop((out_w, err_w));
        let mut step = StepProcess {
            pgid: pid,
            stdout: None,
            stderr: None,
            exit: Exit::of(pid),
            status: None,
            killed: false,
            lifeline: None,
            lifelines: self.lifelines.clone(),
        };
        // From here on an error kills the group; dropping `step` reaps it.
        lifeline.arm(pid)?;
        step.lifeline = Some(lifeline);
        step.stdout = Some(pipe::Receiver::from_owned_fd_unchecked(out_r)?);
        step.stderr = Some(pipe::Receiver::from_owned_fd_unchecked(err_r)?);
        Ok(step)
    }

    /// A lifeline from an earlier step, or a new one.
    fn lifeline(&self) -> io::Result<Lifeline> {
        match self.lifelines.lock().ok().and_then(|mut pool| pool.pop()) {
            Some(l) => Ok(l),
            None => Lifeline::new(),
        }
    }
}

/// A pipe for a step's output: the write end for the step, the read end for the worker's
/// event loop (non-blocking). Both close on exec: the spawn gives the step its copy.
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = std::io::pipe()?;
    #[expect(unsafe_code, reason = "fcntl has no safe wrapper in std")]
    // SAFETY: fcntl on a descriptor owned here, with integer arguments only.
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((read.into(), write.into()))
}

/// The one call into `posix_spawn`, with its attribute and file-action objects.
mod spawn {
    #![expect(
        unsafe_code,
        reason = "posix_spawn and its helpers have no wrapper in std"
    )]

    use std::ffi::{c_char, CStr};
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::{AsRawFd, OwnedFd};

    /// Starts `program` with `argv` and `envp` (both NULL-terminated) in `cwd`, in a new
    /// process group of its own, with `stdio` as its descriptors 0, 1 and 2, every signal
    /// unblocked and SIGPIPE at its default (the worker ignores it). Returns the process
    /// id (and group id).
    pub(super) fn posix_spawn(
        program: &CStr,
        argv: &[*const c_char],
        envp: &[*const c_char],
        cwd: &CStr,
        stdio: [&OwnedFd; 3],
    ) -> io::Result<i32> {
        debug_assert!(argv.last().is_some_and(|p| p.is_null()));
        debug_assert!(envp.last().is_some_and(|p| p.is_null()));
        let mut actions = FileActions::new()?;
        let attr = Attr::new()?;
        // SAFETY: the objects were initialised by their constructors and live until the
        // end of this function; every pointer is to a NUL-terminated string or array that
        // outlives the call; the descriptors are open.
        unsafe {
            let fa = actions.0.as_mut_ptr();
            for (target, fd) in (0..).zip(stdio) {
                check(libc::posix_spawn_file_actions_adddup2(
                    fa,
                    fd.as_raw_fd(),
                    target,
                ))?;
            }
            check(libc::posix_spawn_file_actions_addchdir_np(fa, cwd.as_ptr()))?;
            let mut pid = 0;
            check(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                actions.0.as_ptr(),
                attr.0.as_ptr(),
                argv.as_ptr().cast(),
                envp.as_ptr().cast(),
            ))?;
            Ok(pid)
        }
    }

    fn check(ret: libc::c_int) -> io::Result<()> {
        match ret {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    struct FileActions(Box<MaybeUninit<libc::posix_spawn_file_actions_t>>);

    impl FileActions {
        fn new() -> io::Result<Self> {
            let mut fa = Box::new(MaybeUninit::uninit());
            // SAFETY: initialises the object in place; destroyed on drop only once made.
            check(unsafe { libc::posix_spawn_file_actions_init(fa.as_mut_ptr()) })?;
            Ok(Self(fa))
        }
    }

    impl Drop for FileActions {
        fn drop(&mut self) {
            // SAFETY: initialised in `new`, destroyed once.
            unsafe { libc::posix_spawn_file_actions_destroy(self.0.as_mut_ptr()) };
        }
    }

    struct Attr(Box<MaybeUninit<libc::posix_spawnattr_t>>);

    impl Attr {
        fn new() -> io::Result<Self> {
            let mut a = Box::new(MaybeUninit::uninit());
            // SAFETY: initialises the object in place; destroyed on drop only once made.
            check(unsafe { libc::posix_spawnattr_init(a.as_mut_ptr()) })?;
            let mut attr = Self(a);
            // SAFETY: `attr` is initialised; the signal sets are initialised before use.
            unsafe {
                let mut none = MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(none.as_mut_ptr());
                let mut pipe = MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(pipe.as_mut_ptr());
                libc::sigaddset(pipe.as_mut_ptr(), libc::SIGPIPE);
                let p = attr.0.as_mut_ptr();
                check(libc::posix_spawnattr_setpgroup(p, 0))?;
                check(libc::posix_spawnattr_setsigmask(p, none.as_ptr()))?;
                check(libc::posix_spawnattr_setsigdefault(p, pipe.as_ptr()))?;
                check(libc::posix_spawnattr_setflags(
                    p,
                    (libc::POSIX_SPAWN_SETPGROUP
                        | libc::POSIX_SPAWN_SETSIGMASK
                        | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
                ))?;
            }
            Ok(attr)
        }
    }

    impl Drop for Attr {
        fn drop(&mut self) {
            // SAFETY: initialised in `new`, destroyed once.
            unsafe { libc::posix_spawnattr_destroy(self.0.as_mut_ptr()) };
        }
    }
}

impl Exit {
    fn of(pid: i32) -> Self {
        #[cfg(target_os = "linux")]
        match pidfd(pid) {
            Ok(ended) => return Exit::Pidfd(ended),
            Err(e) => tracing::debug!(error = %e, "no pidfd; a thread waits for the step"),
        }
        Self::by_thread(pid)
    }

    fn by_thread(pid: i32) -> Self {
        Exit::Thread(tokio::task::spawn_blocking(move || wait_blocking(pid)))
    }

    /// The exit status of process `pid`, once: cancel-safe until it returns.
    async fn wait(&mut self, pid: i32) -> io::Result<ExitStatus> {
        match self {
            #[cfg(target_os = "linux")]
            // Readable once the process ended: asked first, so a running step costs no
            // `waitpid` that finds nothing.
            Exit::Pidfd(ended) => loop {
                let mut ready = ended.readable().await?;
                if let Some(status) = try_wait(pid)? {
                    return Ok(status);
                }
                ready.clear_ready();
            },
            Exit::Thread(waiter) => waiter.await.map_err(io::Error::other)?,
        }
    }
}

/// Reaps child `pid` if it has ended.
#[cfg(target_os = "linux")]
fn try_wait(pid: i32) -> io::Result<Option<ExitStatus>> {
    waitpid(pid, libc::WNOHANG)
}

/// Waits for child `pid` to end and reaps it.
fn wait_blocking(pid: i32) -> io::Result<ExitStatus> {
    waitpid(pid, 0)?.ok_or_else(|| io::Error::other("waitpid returned without a status"))
}

fn waitpid(pid: i32, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    loop {
        #[expect(unsafe_code, reason = "waitpid has no wrapper in std for a raw pid")]
        // SAFETY: waitpid writes the status into a local integer.
        match unsafe { libc::waitpid(pid, &mut status, flags) } {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return Err(io::Error::last_os_error()),
            0 => return Ok(None),
            _ => return Ok(Some(ExitStatus::from_raw(status))),
        }
    }
}

/// A pidfd for process `pid`, registered with the worker's event loop. `pid` is a child
/// of this worker not yet waited for, so its number cannot have been reused.
#[cfg(target_os = "linux")]
fn pidfd(pid: i32) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
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

/// Both ends of one lifeline pipe. Only the worker holds them; nothing is ever written to
/// or read from it.
#[derive(Debug)]
struct Lifeline {
    read: PipeReader,
    write: PipeWriter,
}

impl Lifeline {
    /// A new lifeline, set to send SIGKILL (`F_SETSIG`, `O_ASYNC`) to whichever group it is
    /// armed for.
    #[cfg(target_os = "linux")]
    fn new() -> io::Result<Self> {
        /// `F_SETSIG` from `<asm-generic/fcntl.h>` (x86-64, arm64...); the libc crate
        /// does not export it.
        const F_SETSIG: libc::c_int = 10;
        let (read, write) = std::io::pipe()?;
        for fd in [read.as_raw_fd(), write.as_raw_fd()] {
            #[expect(unsafe_code, reason = "fcntl has no safe wrapper in std")]
            // SAFETY: fcntl on a descriptor owned here, with integer arguments only.
            let set = unsafe {
                libc::fcntl(fd, F_SETSIG, libc::SIGKILL) != -1 && {
                    let flags = libc::fcntl(fd, libc::F_GETFL);
                    flags != -1 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) != -1
                }
            };
            if !set {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self { read, write })
    }

    /// From now on, closing either end while the other is open sends SIGKILL to process
    /// group `pgid`. Signals go to that group as the kernel knew it when armed, never to a
    /// later group that happens to reuse the number. The write end is armed first: the
    /// kernel closes a dying process's files in order, the read end (the lower number)
    /// first, which fires the write end's signal.
    #[cfg(target_os = "linux")]
    fn arm(&self, pgid: i32) -> io::Result<()> {
        for fd in [self.write.as_raw_fd(), self.read.as_raw_fd()] {
            #[expect(unsafe_code, reason = "fcntl has no safe wrapper in std")]
            // SAFETY: fcntl on a descriptor this struct owns, with integer arguments only.
            if unsafe { libc::fcntl(fd, libc::F_SETOWN, -pgid) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn new() -> io::Result<Self> {
        let (read, write) = std::io::pipe()?;
        Ok(Self { read, write })
    }

    /// Only Linux lets a pipe's closing send SIGKILL: elsewhere (a developer's laptop) a step
    /// outlives a worker that is killed outright, though not one that shuts down cleanly.
    #[cfg(not(target_os = "linux"))]
    fn arm(&self, _pgid: i32) -> io::Result<()> {
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

/// Kills every process of group `pgid`.
fn kill_group(pgid: i32) {
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
    // clearing 64 KiB per pipe per step showed in the worker's profile. Small at first:
    // allocating 64 KiB twice per step (heap growth, page faults, trimming) showed too; a
    // step whose output fills the buffer gets the pipe's whole capacity from then on.
    let mut size = 4 * 1024;
    let mut buf: Vec<u8> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        buf.clear();
        buf.reserve(size);
        match pipe.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) if n >= size => size = 64 * 1024,
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

    /// Starts `script` under `l` in the temporary folder with no variables of its own.
    fn spawn(l: &Launcher, script: &str) -> StepProcess {
        l.spawn(script, &std::env::temp_dir(), &BTreeMap::new())
            .expect("spawn")
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
        let mut p = spawn(
            &l,
            "[ $# = 0 ] || exit 3; [ \"$0\" = sh ] || exit 4; if read x; then exit 5; fi; \
             [ \"$(readlink /proc/$$/fd/0)\" = /dev/null ] || exit 6; false; exit 9",
        );
        let status = p.wait().await.expect("wait");
        assert_eq!(status.code(), Some(1), "set -e stops at `false`");
        kill_group(p.pgid);
    }

    #[tokio::test]
    async fn another_program_gets_the_script_and_its_exit_code_comes_back() {
        let l = Launcher::new(&shell(&["env", "sh", "-c"])).expect("env");
        let mut p = spawn(&l, "exit 4");
        let status = p.wait().await.expect("wait");
        assert_eq!(status.code(), Some(4));
        kill_group(p.pgid);
    }

    #[tokio::test]
    async fn without_a_pidfd_a_thread_waits_for_the_step() {
        let l = Launcher::new(&shell(&["sh", "-c"])).expect("sh");
        let mut p = spawn(&l, "sleep 0.05; exit 7");
        p.exit = Exit::by_thread(p.pgid);
        let status = p.wait().await.expect("wait");
        assert_eq!(status.code(), Some(7));
    }

    #[tokio::test]
    async fn a_step_runs_in_its_folder_with_the_workers_environment_overlaid_by_its_own() {
        let l = Launcher::new(&shell(&["sh", "-c"])).expect("sh");
        let dir = std::fs::canonicalize(std::env::temp_dir()).expect("temp dir");
        let env = BTreeMap::from([
            ("HOME".to_owned(), "/kiln-home".to_owned()),
            ("KILN_JOB".to_owned(), "j".to_owned()),
        ]);
        let script = format!(
            "[ \"$(pwd -P)\" = '{}' ] || exit 3; [ \"$HOME\" = /kiln-home ] || exit 4; \
             [ \"$(env | grep -c '^HOME=')\" = 1 ] || exit 5; [ \"$KILN_JOB\" = j ] || exit 6; \
             [ -n \"$PATH\" ] || exit 7",
            dir.display()
        );
        let mut p = l.spawn(&script, &dir, &env).expect("spawn");
        assert_eq!(p.wait().await.expect("wait").code(), Some(0));
    }

    #[test]
    fn a_nul_byte_in_a_step_is_refused_before_anything_starts() {
        let l = Launcher::new(&shell(&["sh", "-c"])).expect("sh");
        let env = BTreeMap::from([("A".to_owned(), "x\0y".to_owned())]);
        let e = l
            .spawn("true", &std::env::temp_dir(), &env)
            .err()
            .expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    /// Lifelines are reused: one that served an ended step must guard the next step's
    /// group, not the old one's.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_reused_lifeline_guards_its_new_step() {
        let l = Launcher::new(&shell(&["sh", "-c"])).expect("sh");
        let mut first = spawn(&l, "true");
        first.wait().await.expect("wait");
        first.kill_group();
        drop(first);
        let p = spawn(&l, "sleep 300 & sleep 301");
        assert!(l.lifelines.lock().expect("pool").is_empty(), "taken again");
        cut_lifeline_and_see_the_group_killed(p).await;
    }

    /// A zombie of a step whose build task was dropped would stay in the process table for
    /// the worker's whole life, and its group would run on.
    #[tokio::test]
    async fn a_step_dropped_before_its_end_is_killed_and_reaped() {
        let l = Launcher::new(&shell(&["sh", "-c"])).expect("sh");
        let p = spawn(&l, "sleep 300");
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
        let p = spawn(&l, "sleep 300 & sleep 301");
        assert!(group_alive(p.pgid));
        cut_lifeline_and_see_the_group_killed(p).await;
    }

    /// Closes `p`'s lifeline as the kernel would when the worker dies, then checks that the
    /// step and the `sleep` it left in the background were killed.
    #[cfg(target_os = "linux")]
    async fn cut_lifeline_and_see_the_group_killed(mut p: StepProcess) {
        let pgid = p.pgid;
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
