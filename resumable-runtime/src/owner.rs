//! Worker ids that say which process holds a lease, so that a process on
//! the same machine can tell at once that a holder is gone, and take its
//! runs without waiting out their leases.
//!
//! A default worker id is `host:pid:start:scope`: the host name, the process
//! id, the process's start time (clock ticks since boot, so a reused pid is
//! not mistaken for the holder) and a hash of the kernel's boot id and the
//! pid namespace (so that a process in another container, or before a
//! reboot, is never judged from this one's process table). Only on Linux can
//! a holder be seen to be gone; elsewhere, and for ids set by the user, its
//! leases are waited out as before.

use std::sync::OnceLock;

/// This process, as the default worker id names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcessId {
    host: String,
    pid: u32,
    start: u64,
    scope: String,
}

impl ProcessId {
    fn parse(owner: &str) -> Option<Self> {
        let mut parts = owner.rsplitn(4, ':');
        let scope = parts.next()?.to_owned();
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_owned();
        Some(ProcessId {
            host,
            pid,
            start,
            scope,
        })
    }
}

/// This process's identity, if the platform tells it.
fn this_process() -> Option<&'static ProcessId> {
    static THIS: OnceLock<Option<ProcessId>> = OnceLock::new();
    THIS.get_or_init(|| {
        let pid = std::process::id();
        Some(ProcessId {
            host: platform::host_name()?,
            pid,
            start: platform::start_time(pid)?,
            scope: platform::scope()?,
        })
    })
    .as_ref()
}

/// The default worker id: `host:pid:start:scope` where the platform tells
/// them, else `worker-pid-random`.
pub(crate) fn default_worker_id() -> String {
    match this_process() {
        Some(p) => format!("{}:{}:{}:{}", p.host, p.pid, p.start, p.scope),
        None => format!("worker-{}-{:08x}", std::process::id(), fastrand::u32(..)),
    }
}

/// Whether `owner` is a default worker id of a process on this machine (and
/// in this pid namespace, since this boot) that is no longer running.
pub(crate) fn is_gone(owner: &str) -> bool {
    let (Some(this), Some(other)) = (this_process(), ProcessId::parse(owner)) else {
        return false;
    };
    if other.host != this.host || other.scope != this.scope {
        return false;
    }
    if other.pid == this.pid {
        return other.start != this.start;
    }
    platform::start_time(other.pid) != Some(other.start)
}

#[cfg(target_os = "linux")]
mod platform {
    use std::hash::{Hash, Hasher};

    pub(super) fn host_name() -> Option<String> {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
        let name = name.trim();
        (!name.is_empty() && !name.contains(':')).then(|| name.to_owned())
    }

    /// The start time of process `pid` in clock ticks since boot (field 22
    /// of `/proc/<pid>/stat`), if it runs.
    pub(super) fn start_time(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses.
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name.split_whitespace().nth(19)?.parse().ok()
    }

    /// A hash of this boot and this pid namespace.
    pub(super) fn scope() -> Option<String> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
        // Stable across processes and builds: FNV-1a, not the std hasher.
        let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
        boot.trim().hash(&mut hash);
        namespace.hash(&mut hash);
        Some(format!("{:08x}", hash.finish() as u32))
    }

    struct Fnv(u64);

    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    pub(super) fn host_name() -> Option<String> {
        None
    }
    pub(super) fn start_time(_pid: u32) -> Option<u64> {
        None
    }
    pub(super) fn scope() -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_id_names_this_live_process() {
        let id = default_worker_id();
        if cfg!(target_os = "linux") {
            let parsed = ProcessId::parse(&id).unwrap();
            assert_eq!(Some(&parsed), this_process());
        }
        assert!(!is_gone(&id), "{id} is this process");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_exited_process_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = platform::start_time(pid);
        child.wait().unwrap();
        let this = this_process().unwrap();
        // Its start time, if it was read in time; any start time works once it is gone.
        let owner = format!("{}:{pid}:{}:{}", this.host, start.unwrap_or(1), this.scope);
        assert!(is_gone(&owner), "{owner}");
        // Same pid, another start time: the pid was reused.
        let reused = format!(
            "{}:{}:{}:{}",
            this.host,
            this.pid,
            this.start + 1,
            this.scope
        );
        assert!(is_gone(&reused));
        // Another machine, another namespace, or an id the user chose: never judged.
        let elsewhere = format!("other-host:{pid}:1:{}", this.scope);
        assert!(!is_gone(&elsewhere));
        assert!(!is_gone(&format!("{}:{pid}:1:ffffffff", this.host)));
        assert!(!is_gone("render-7"));
    }
}
