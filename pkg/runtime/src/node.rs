//! Facts about the node berthd runs on that bound what a container may be given.

use std::path::{Path, PathBuf};

use crate::spec::NodeFacts;

/// Bit of CAP_SYS_RESOURCE in the capability sets of /proc/<pid>/status.
const CAP_SYS_RESOURCE: u32 = 24;

/// Capability names by bit number, as the kernel numbers them (`include/uapi/linux/capability.h`).
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Reads this process's own limits — its `oom_score_adj` (a floor for containers unless it
/// holds CAP_SYS_RESOURCE) and the capabilities in its bounding set — and what the node's
/// cgroups offer. Host devices are left out: they are read when a privileged container needs
/// them, since /dev changes while berthd runs.
pub fn detect() -> NodeFacts {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut facts = facts_from(
        &status,
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .as_deref(),
    );
    facts.hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    facts.recursive_read_only = crate::mounts::recursive_read_only_supported();
    facts.cgroup_v2 = cgroups_rs::hierarchies::is_cgroup2_unified_mode();
    if facts.cgroup_v2 {
        let controllers =
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        facts.hugetlb_controller = controllers.split_whitespace().any(|c| c == "hugetlb");
        // The root cgroup has no memory.swap.max; our own cgroup shows whether swap accounting
        // is on.
        facts.swap_controller = own_v2_cgroup()
            .map(|dir| dir.join("memory.swap.max").exists())
            .unwrap_or(false);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        facts.cgroup2_host_options = cgroup2_options(&mountinfo);
    } else {
        facts.hugetlb_controller = Path::new("/sys/fs/cgroup/hugetlb").is_dir();
        facts.swap_controller =
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists();
    }
    facts
}

fn own_v2_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/')))
}

/// Which of `nsdelegate` and `memory_recursiveprot` the cgroup2 mount at /sys/fs/cgroup has.
fn cgroup2_options(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup"))
        .filter_map(|l| l.split_once(" - "))
        .filter(|(_, tail)| tail.starts_with("cgroup2 "))
        .flat_map(|(_, tail)| {
            tail.split(' ')
                .nth(2)
                .unwrap_or_default()
                .split(',')
                .filter(|o| *o == "nsdelegate" || *o == "memory_recursiveprot")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn facts_from(status: &str, oom_score_adj: Option<&str>) -> NodeFacts {
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let effective = mask("CapEff:");
    let bounding = mask("CapBnd:");
    let floor = if effective & (1 << CAP_SYS_RESOURCE) != 0 {
        None
    } else {
        oom_score_adj.and_then(|s| s.trim().parse().ok())
    };
    let capabilities = CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    NodeFacts {
        oom_score_adj_floor: floor,
        capabilities,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_without_sys_resource_gets_its_own_score_as_floor() {
        // This machine's root: everything but CAP_SYS_RESOURCE.
        let status = "Name:\tberthd\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
        let f = facts_from(status, Some("0\n"));
        assert_eq!(f.oom_score_adj_floor, Some(0));
        assert!(f.capabilities.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!f.capabilities.contains(&"CAP_SYS_RESOURCE".to_string()));
        assert_eq!(f.capabilities.len(), 40);
    }

    #[test]
    fn cgroup2_mount_options_are_read_from_mountinfo() {
        let info = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            cgroup2_options(info),
            vec!["nsdelegate", "memory_recursiveprot"]
        );
        let hybrid = "30 23 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert!(cgroup2_options(hybrid).is_empty());
    }

    #[test]
    fn a_daemon_with_sys_resource_has_no_floor() {
        let status = "CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        let f = facts_from(status, Some("-999"));
        assert_eq!(f.oom_score_adj_floor, None);
        assert_eq!(f.capabilities.len(), 41);
    }
}
