//! Resource usage of a cgroup, a writable layer and a network namespace, in the units of the
//! CRI stats messages. Read straight from the kernel's files (cgroup v1, a hybrid host's v1
//! controllers, or pure v2): every read is a few small files, cheaper than any library that
//! loads a whole controller.
//!
//! A missing file is "unknown" (`None`), never an error: a container that exits between the
//! listing and the read simply has no numbers, which is what kubelet expects of a stats call.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cgroups_rs::hierarchies;

/// cgroup v1 reports "no limit" as a page-aligned i64::MAX; anything this large is no limit.
const NO_LIMIT_FLOOR: u64 = 1 << 62;

/// One reading of a cgroup. Counters are cumulative since the cgroup was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupSample {
    /// Unix nanoseconds at which the files were read.
    pub timestamp: i64,
    pub cpu_usage_ns: Option<u64>,
    pub memory: Option<MemorySample>,
    pub swap: Option<SwapSample>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub usage: u64,
    /// Usage minus inactive file pages: what kubelet evicts on and what the OOM killer sees.
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub limit: Option<u64>,
}

impl MemorySample {
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwapSample {
    pub usage: u64,
    pub limit: Option<u64>,
}

impl SwapSample {
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.usage))
    }
}

/// Average CPU use between two readings of the same cgroup, in nanoseconds of CPU per second
/// (1e9 = one core busy). `None` when the readings are not in order or lack a counter.
pub fn nano_cores(earlier: &CgroupSample, later: &CgroupSample) -> Option<u64> {
    let dt = later.timestamp.checked_sub(earlier.timestamp)?;
    if dt <= 0 {
        return None;
    }
    let used = later.cpu_usage_ns?.checked_sub(earlier.cpu_usage_ns?)?;
    Some((u128::from(used) * 1_000_000_000 / dt as u128).min(u128::from(u64::MAX)) as u64)
}

/// Where one cgroup's files are, per controller.
struct CgroupFiles {
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    v2: bool,
}

fn v1_controller(names: &[&str], rel: &str) -> Option<PathBuf> {
    names
        .iter()
        .map(|n| Path::new("/sys/fs/cgroup").join(n))
        .find(|p| p.is_dir())
        .map(|p| p.join(rel))
}

fn files(path: &str) -> CgroupFiles {
    let rel = path.trim_start_matches('/');
    if hierarchies::is_cgroup2_unified_mode() {
        let dir = Path::new("/sys/fs/cgroup").join(rel);
        return CgroupFiles {
            cpu: Some(dir.clone()),
            memory: Some(dir.clone()),
            pids: Some(dir),
            v2: true,
        };
    }
    CgroupFiles {
        cpu: v1_controller(&["cpuacct", "cpu,cpuacct", "cpuacct,cpu"], rel),
        memory: v1_controller(&["memory"], rel),
        pids: v1_controller(&["pids"], rel),
        v2: false,
    }
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// A v2 limit file: a number, or `max` for none.
fn read_limit(dir: &Path, file: &str) -> Option<u64> {
    let text = read(dir, file)?;
    let v: u64 = text.trim().parse().ok()?;
    (v < NO_LIMIT_FLOOR).then_some(v)
}

/// `key value` lines, as in `memory.stat` and `cpu.stat`.
pub fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

/// Memory figures from `memory.stat` and the usage/limit files; v1 keys are the hierarchical
/// `total_*` ones so a pod cgroup counts its containers.
pub fn memory_from(v2: bool, stat: &str, usage: u64, limit: Option<u64>) -> MemorySample {
    let stat = parse_flat_keyed(stat);
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let (inactive_file, rss, faults, major) = if v2 {
        (
            get("inactive_file"),
            get("anon"),
            get("pgfault"),
            get("pgmajfault"),
        )
    } else {
        (
            get("total_inactive_file"),
            get("total_rss"),
            get("total_pgfault"),
            get("total_pgmajfault"),
        )
    };
    MemorySample {
        usage,
        working_set: usage.saturating_sub(inactive_file),
        rss,
        page_faults: faults,
        major_page_faults: major,
        limit,
    }
}

/// Reads cgroup `path` (cgroupfs style, `/berth/pod…/<id>`).
pub fn sample_cgroup(path: &str) -> CgroupSample {
    let f = files(path);
    let timestamp = berth_core::unix_nanos();
    let cpu_usage_ns = f.cpu.as_deref().and_then(|d| {
        if f.v2 {
            let stat = read(d, "cpu.stat")?;
            parse_flat_keyed(&stat).get("usage_usec").map(|u| u * 1000)
        } else {
            read_u64(d, "cpuacct.usage")
        }
    });
    let (memory, swap) = match f.memory.as_deref() {
        Some(d) if d.is_dir() => memory_and_swap(d, f.v2),
        _ => (None, None),
    };
    let pids = f.pids.as_deref().and_then(|d| read_u64(d, "pids.current"));
    CgroupSample {
        timestamp,
        cpu_usage_ns,
        memory,
        swap,
        pids,
    }
}

fn memory_and_swap(d: &Path, v2: bool) -> (Option<MemorySample>, Option<SwapSample>) {
    let stat = read(d, "memory.stat").unwrap_or_default();
    if v2 {
        let memory = read_u64(d, "memory.current")
            .map(|usage| memory_from(true, &stat, usage, read_limit(d, "memory.max")));
        let swap = read_u64(d, "memory.swap.current").map(|usage| SwapSample {
            usage,
            limit: read_limit(d, "memory.swap.max"),
        });
        return (memory, swap);
    }
    let usage = read_u64(d, "memory.usage_in_bytes");
    let limit = read_limit(d, "memory.limit_in_bytes");
    let memory = usage.map(|usage| memory_from(false, &stat, usage, limit));
    // v1 counts memory+swap together; swap alone is the difference.
    let swap = match (usage, read_u64(d, "memory.memsw.usage_in_bytes")) {
        (Some(mem), Some(both)) => Some(SwapSample {
            usage: both.saturating_sub(mem),
            limit: read_limit(d, "memory.memsw.limit_in_bytes")
                .zip(limit)
                .map(|(both, mem)| both.saturating_sub(mem)),
        }),
        _ => None,
    };
    (memory, swap)
}

/// Disk use of a directory tree, as `du` counts it: allocated blocks, each inode once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub timestamp: i64,
    pub bytes: u64,
    pub inodes: u64,
}

/// Walks `dir` without following symlinks and without leaving its filesystem (an overlay upper
/// dir can hold nothing mounted, but a volume dir could).
pub fn disk_usage(dir: &Path) -> std::io::Result<DiskUsage> {
    let timestamp = berth_core::unix_nanos();
    let root = std::fs::symlink_metadata(dir)?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut usage = DiskUsage {
        timestamp,
        ..Default::default()
    };
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed while walking: a running container changes its layer under us.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !first => continue,
            Err(e) => return Err(e),
        };
        first = false;
        if meta.dev() != dev || !seen.insert(meta.ino()) {
            continue;
        }
        usage.inodes += 1;
        usage.bytes += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    Ok(usage)
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes packets errs drop fifo frame
/// compressed multicast tx_bytes packets errs …`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            if n.len() < 16 {
                return None;
            }
            Some(InterfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

/// The interface counters of the calling thread's network namespace (run it inside the pod's
/// namespace: `/proc/thread-self` follows the thread, `/proc/self` the process leader).
pub fn read_net_dev() -> std::io::Result<Vec<InterfaceCounters>> {
    Ok(parse_net_dev(&std::fs::read_to_string(
        "/proc/thread-self/net/dev",
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_is_cpu_time_per_wall_second() {
        let a = CgroupSample {
            timestamp: 1_000_000_000,
            cpu_usage_ns: Some(5_000_000_000),
            ..Default::default()
        };
        let b = CgroupSample {
            timestamp: 1_500_000_000,
            cpu_usage_ns: Some(5_250_000_000),
            ..Default::default()
        };
        // 250 ms of CPU in 500 ms of wall time: half a core.
        assert_eq!(nano_cores(&a, &b), Some(500_000_000));
        assert_eq!(nano_cores(&b, &a), None);
        assert_eq!(nano_cores(&a, &a), None);
        let no_cpu = CgroupSample {
            cpu_usage_ns: None,
            ..b.clone()
        };
        assert_eq!(nano_cores(&a, &no_cpu), None);
    }

    #[test]
    fn v1_memory_uses_hierarchical_totals() {
        let stat = "cache 100\nrss 7\ninactive_file 1\ntotal_rss 4096\ntotal_inactive_file 1000\ntotal_pgfault 55\ntotal_pgmajfault 2\n";
        let m = memory_from(false, stat, 10_000, Some(20_000));
        assert_eq!(m.working_set, 9_000);
        assert_eq!(m.rss, 4096);
        assert_eq!(m.page_faults, 55);
        assert_eq!(m.major_page_faults, 2);
        assert_eq!(m.available(), Some(11_000));
        let unlimited = memory_from(false, stat, 10_000, None);
        assert_eq!(unlimited.available(), None);
    }

    #[test]
    fn v2_memory_uses_anon_and_inactive_file() {
        let stat = "anon 300\nfile 900\ninactive_file 500\npgfault 9\npgmajfault 1\n";
        let m = memory_from(true, stat, 1_000, None);
        assert_eq!(m.working_set, 500);
        assert_eq!(m.rss, 300);
        assert_eq!((m.page_faults, m.major_page_faults), (9, 1));
        // Inactive file pages larger than usage (racy reads) must not wrap.
        assert_eq!(memory_from(true, stat, 100, None).working_set, 0);
    }

    #[test]
    fn net_dev_lines_are_parsed() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0\n  eth0:    4242      10    3    0    0     0          0         0     9000      20    4    0    0     0       0          0\n";
        let ifs = parse_net_dev(text);
        assert_eq!(ifs.len(), 2);
        assert_eq!(
            ifs[1],
            InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 4242,
                rx_errors: 3,
                tx_bytes: 9000,
                tx_errors: 4,
            }
        );
        assert!(parse_net_dev("h1\nh2\nbroken line\n").is_empty());
    }

    #[test]
    fn disk_usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).expect("write");
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).expect("link");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", dir.path().join("sub/l")).expect("symlink");
        let u = disk_usage(dir.path()).expect("du");
        // root, a (= b), sub, sub/l
        assert_eq!(u.inodes, 4);
        assert!(u.bytes >= 64 * 1024, "{u:?}");
        assert!(u.bytes < 64 * 1024 * 3, "{u:?}");
        assert!(disk_usage(&dir.path().join("missing")).is_err());
    }
}
