//! CPU time per process, from `/proc/<pid>/stat`: where a build's CPU goes (the step's
//! shell, the worker, Redis, the api) is steadier from run to run than builds per second on a
//! shared machine, and says which part of Kiln a throughput shortfall comes from.

use std::time::Duration;

/// `/proc` reports times in clock ticks of `USER_HZ`, 100 on every Linux architecture Kiln
/// runs on (it is part of the kernel's user-space ABI, unlike the kernel's own `HZ`).
const USER_HZ: f64 = 100.0;

/// CPU a process used itself, and what its children used that it has waited for (a
/// worker's children are its steps' processes).
#[derive(Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) own: Duration,
    pub(crate) children: Duration,
}

impl Cpu {
    /// The process's totals so far; `None` without `/proc` (not Linux) or once it is gone.
    pub(crate) fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which may itself hold spaces or parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
        // utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the name.
        let secs = |a: u64, b: u64| Duration::from_secs_f64((a + b) as f64 / USER_HZ);
        Some(Self {
            own: secs(ticks(11)?, ticks(12)?),
            children: secs(ticks(13)?, ticks(14)?),
        })
    }

    /// The sum over `pids`; `None` if any of them cannot be read.
    pub(crate) fn of_all(pids: &[u32]) -> Option<Self> {
        pids.iter().try_fold(Self::default(), |sum, pid| {
            let c = Self::of(*pid)?;
            Some(Self {
                own: sum.own + c.own,
                children: sum.children + c.children,
            })
        })
    }

    /// What was used since `earlier`, per one of `n` builds, in milliseconds.
    pub(crate) fn per(self, earlier: Self, n: usize) -> (f64, f64) {
        let ms = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() * 1e3 / n as f64;
        (
            ms(self.own, earlier.own),
            ms(self.children, earlier.children),
        )
    }
}
