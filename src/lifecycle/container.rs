//! What the container lets this process use: the cgroup CPU quota and memory limit, the CPU
//! affinity mask and the online cores, and from those the default number of worker processes.
//!
//! A container sees the host's cores but may run on a fraction of them: a pod limited to 1.5
//! CPUs on a 64-core node that starts 64 workers spends its quota in the first milliseconds of
//! each CFS period and is throttled for the rest, with 64 copies of the app in memory.
//!
//! The limits are read from the cgroup files of the process's own cgroup and of its parents up
//! to the top of the mount, since a limit set on a parent also holds for its children.
//! Everything here is best effort: a file that is missing or unreadable means "no limit".

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// What the process may use, as found at startup.
#[derive(Clone, Debug, PartialEq)]
pub struct Resources {
    /// CPU limit in CPUs (quota / period) when a quota is set, e.g. 1.5.
    pub cpu_quota: Option<f64>,
    /// Where the quota came from, for the startup log: "cgroup v2 cpu.max" or
    /// "cgroup v1 cpu.cfs_quota_us".
    pub cpu_quota_source: Option<&'static str>,
    /// Memory limit in bytes; `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// CPUs in the process's affinity mask.
    pub affinity: Option<usize>,
    /// Online cores on the machine.
    pub cores: usize,
    /// The cgroup version the CPU controller (or, without one, the memory controller) was found
    /// in; `None` when neither is visible.
    pub cgroup_version: Option<u8>,
}

const V2_CPU: &str = "cgroup v2 cpu.max";
const V1_CPU: &str = "cgroup v1 cpu.cfs_quota_us";

/// Memory limits from here up mean "unlimited": cgroup v1 shows an unset limit as the largest
/// page-aligned i64 (9223372036854771712 with 4 KiB pages), which depends on the page size.
const UNLIMITED_MEMORY: u64 = 1 << 60;

/// More than any cgroup file read here holds; a larger file is garbage, not a reason to read on.
const MAX_FILE: u64 = 4096;

/// The last probe and the root it read. Sizing the workers (in Python, before the import) and
/// the startup report (once the port opens) both need the limits; the report takes them from
/// here, so one start reads the cgroup files once.
static LAST_PROBE: Mutex<Option<(Option<PathBuf>, Resources)>> = Mutex::new(None);

/// Reads the limits of the process's cgroup. `None` reads the real system; in tests,
/// `cgroup_root` stands in for the mount point(s): a cgroup2 mount if it has
/// `cgroup.controllers`, otherwise a directory of v1 mounts like /sys/fs/cgroup.
pub fn probe(cgroup_root: Option<&Path>) -> Resources {
    let resources = read_limits(cgroup_root);
    crate::telemetry::log::debug(format_args!("container probed: {}", resources.describe()));
    if let Ok(mut last) = LAST_PROBE.lock() {
        *last = Some((cgroup_root.map(Path::to_path_buf), resources.clone()));
    }
    resources
}

/// What the last [`probe`] of `cgroup_root` found, or a new probe if there was none.
pub fn probed(cgroup_root: Option<&Path>) -> Resources {
    let last = LAST_PROBE.lock().ok().and_then(|last| last.clone());
    match last {
        Some((root, resources)) if root.as_deref() == cgroup_root => resources,
        _ => probe(cgroup_root),
    }
}

impl Resources {
    /// One line for the debug log.
    fn describe(&self) -> String {
        let version = self.cgroup_version.map_or_else(|| "no cgroup".to_owned(), |v| format!("cgroup v{v}"));
        let quota = match (self.cpu_quota, self.cpu_quota_source) {
            (Some(q), Some(source)) => format!("CPU quota {q} ({source})"),
            (Some(q), None) => format!("CPU quota {q}"),
            _ => "no CPU quota".to_owned(),
        };
        let memory = self.memory_limit.map_or_else(|| "no memory limit".to_owned(), |m| format!("memory limit {m} bytes"));
        let affinity = self.affinity.map_or_else(|| "affinity unknown".to_owned(), |a| format!("affinity {a} CPU(s)"));
        format!("{version}, {quota}, {memory}, {affinity}, {} online core(s)", self.cores)
    }
}

fn read_limits(cgroup_root: Option<&Path>) -> Resources {
    let membership = Membership::parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let (cpu, memory) = match cgroup_root {
        Some(root) => (in_tree(root, "cpu", &membership), in_tree(root, "memory", &membership)),
        None => {
            let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
            (on_system("cpu", &membership, &mounts), on_system("memory", &membership, &mounts))
        }
    };
    let cpu_quota = cpu.as_ref().and_then(Cgroup::cpu_quota);
    Resources {
        cpu_quota,
        cpu_quota_source: cpu.as_ref().filter(|_| cpu_quota.is_some()).map(|c| match c.version {
            2 => V2_CPU,
            _ => V1_CPU,
        }),
        memory_limit: memory.as_ref().and_then(Cgroup::memory_limit),
        affinity: affinity(),
        cores: online_cores(),
        cgroup_version: cpu.as_ref().or(memory.as_ref()).map(|c| c.version),
    }
}

/// The default worker count and why, for the startup log. The first that holds wins: the
/// `WEB_CONCURRENCY` value, the CPU quota rounded up, an affinity mask narrower than the
/// machine, the online cores.
pub fn default_workers(web_concurrency: Option<&str>, r: &Resources) -> Result<(usize, String), String> {
    if let Some(value) = web_concurrency {
        return match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok((n, format!("WEB_CONCURRENCY={n}"))),
            _ => Err(format!("WEB_CONCURRENCY: expected a positive integer, got '{}'", value.escape_debug())),
        };
    }
    if let Some(quota) = r.cpu_quota.filter(|q| q.is_finite() && *q > 0.0) {
        // Rounded up: 1.5 CPUs keep two workers busy half the time each, which the quota
        // allows; one worker would leave half a CPU unused.
        let workers = (quota.ceil() as usize).max(1);
        let version = r.cgroup_version.map(|v| format!(" v{v}")).unwrap_or_default();
        let cpus = (quota * 1000.0).round() / 1000.0;
        return Ok((workers, format!("cgroup{version} quota {cpus} CPU")));
    }
    // A mask that covers every core restricts nothing; the log then names the cores.
    if let Some(n) = r.affinity.filter(|&n| n > 0 && n < r.cores) {
        return Ok((n, format!("CPU affinity {n}")));
    }
    let cores = r.cores.max(1);
    Ok((cores, if cores == 1 { "1 core".to_string() } else { format!("{cores} cores") }))
}

/// The process's place in each hierarchy, from `/proc/self/cgroup`.
#[derive(Debug, Default)]
struct Membership {
    /// The path on the `0::` line (cgroup v2).
    unified: Option<String>,
    /// `(controllers, path)` for each v1 hierarchy.
    v1: Vec<(Vec<String>, String)>,
}

impl Membership {
    fn parse(text: &str) -> Membership {
        let mut membership = Membership::default();
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                membership.unified = Some(path.to_string());
            } else {
                membership.v1.push((controllers.split(',').map(str::to_string).collect(), path.to_string()));
            }
        }
        membership
    }

    fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1.iter().find(|(controllers, _)| controllers.iter().any(|c| c == controller)).map(|(_, path)| path.as_str())
    }
}

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug)]
struct Mount {
    /// The part of the hierarchy mounted here: not `/` in containers with a cgroup namespace
    /// or a bind mount of the container's own cgroup.
    root: PathBuf,
    point: PathBuf,
    fstype: String,
    super_options: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
            let fstype = *fields.get(dash + 1)?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                root: unescape(fields[3]),
                point: unescape(fields[4]),
                fstype: fstype.to_string(),
                super_options: fields.get(dash + 3)?.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo paths.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match digits.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The real system: the hierarchy that has `controller` attached, and the process's cgroup in
/// it. On hybrid hosts the cgroup2 mount exists but holds few or no controllers, so v2 is used
/// only when its `cgroup.controllers` lists this one.
fn on_system(controller: &str, membership: &Membership, mounts: &[Mount]) -> Option<Cgroup> {
    if let Some(path) = membership.unified.as_deref() {
        let mount = pick_mount(mounts.iter().filter(|m| m.fstype == "cgroup2"), path);
        if let Some(mount) = mount.filter(|m| lists_controller(&m.point, controller)) {
            return Some(Cgroup::new(2, &mount.point, &mount.root, path));
        }
    }
    let path = membership.v1_path(controller)?;
    let mount = pick_mount(
        mounts.iter().filter(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == controller)),
        path,
    )?;
    Some(Cgroup::new(1, &mount.point, &mount.root, path))
}

/// Of several mounts of one hierarchy, the one that shows the process's cgroup.
fn pick_mount<'a>(mut mounts: impl Iterator<Item = &'a Mount> + Clone, path: &str) -> Option<&'a Mount> {
    mounts.clone().find(|m| Path::new(path).starts_with(&m.root)).or_else(|| mounts.next())
}

fn lists_controller(dir: &Path, controller: &str) -> bool {
    read_small(&dir.join("cgroup.controllers")).is_some_and(|text| text.split_whitespace().any(|c| c == controller))
}

/// A made-up tree: `root` is a cgroup2 mount if it has `cgroup.controllers`, otherwise it holds
/// v1 mounts in `cpu,cpuacct` or `cpu`, and `memory`, as under /sys/fs/cgroup.
fn in_tree(root: &Path, controller: &str, membership: &Membership) -> Option<Cgroup> {
    if root.join("cgroup.controllers").is_file() {
        return Some(Cgroup::new(2, root, Path::new("/"), membership.unified.as_deref().unwrap_or("/")));
    }
    let names: &[&str] = if controller == "cpu" { &["cpu,cpuacct", "cpu"] } else { &[controller] };
    let top = names.iter().map(|name| root.join(name)).find(|dir| dir.is_dir())?;
    Some(Cgroup::new(1, &top, Path::new("/"), membership.v1_path(controller).unwrap_or("/")))
}

/// The process's cgroup directory in one mounted hierarchy.
#[derive(Debug)]
struct Cgroup {
    version: u8,
    dir: PathBuf,
    /// The mount point: parents above it are not visible.
    top: PathBuf,
}

impl Cgroup {
    /// `path` is the process's cgroup as /proc/self/cgroup shows it, `mount_root` the part of the
    /// hierarchy mounted at `point`. When the path is not visible under the mount (another
    /// namespace's view, or a made-up tree without it), the mount point is the best guess.
    fn new(version: u8, point: &Path, mount_root: &Path, path: &str) -> Cgroup {
        let relative = Path::new(path)
            .strip_prefix(mount_root)
            .ok()
            .filter(|r| r.components().all(|c| matches!(c, Component::Normal(_))));
        let dir = match relative {
            Some(r) if !r.as_os_str().is_empty() && point.join(r).is_dir() => point.join(r),
            _ => point.to_path_buf(),
        };
        Cgroup { version, dir, top: point.to_path_buf() }
    }

    /// The process's cgroup, then its parents up to the mount point.
    fn lineage(&self) -> impl Iterator<Item = &Path> {
        self.dir.ancestors().take_while(|dir| dir.starts_with(&self.top))
    }

    fn cpu_quota(&self) -> Option<f64> {
        self.lineage()
            .filter_map(|dir| match self.version {
                2 => parse_cpu_max(&read_small(&dir.join("cpu.max"))?),
                _ => parse_cfs(&read_small(&dir.join("cpu.cfs_quota_us"))?, &read_small(&dir.join("cpu.cfs_period_us"))?),
            })
            .min_by(f64::total_cmp)
    }

    fn memory_limit(&self) -> Option<u64> {
        let file = if self.version == 2 { "memory.max" } else { "memory.limit_in_bytes" };
        self.lineage().filter_map(|dir| parse_memory(&read_small(&dir.join(file))?)).min()
    }
}

/// v2 `cpu.max`: `"$QUOTA $PERIOD"` or `"max $PERIOD"`.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next()?.parse().ok()?;
    (quota > 0 && period > 0 && fields.next().is_none()).then(|| quota as f64 / period as f64)
}

/// v1 `cpu.cfs_quota_us` (-1 without a quota) and `cpu.cfs_period_us`.
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// v2 `memory.max` (`max` without a limit) or v1 `memory.limit_in_bytes`.
fn parse_memory(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&bytes| bytes < UNLIMITED_MEMORY)
}

/// The start of a cgroup file. Opened non-blocking so that a FIFO in a made-up tree cannot
/// stall startup; cgroupfs ignores the flag.
fn read_small(path: &Path) -> Option<String> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text).ok()?;
    Some(text)
}

/// CPUs in the affinity mask (`taskset`, `docker --cpuset-cpus`). `None` when it cannot be read,
/// which includes machines with more CPUs than a `cpu_set_t` holds (1024).
fn affinity() -> Option<usize> {
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is the empty set, and the
    // size passed is its own.
    let count = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        libc::CPU_COUNT(&set)
    };
    usize::try_from(count).ok().filter(|&n| n > 0)
}

/// Online cores, from sysconf rather than `std::thread::available_parallelism`, which applies
/// the cgroup quota and affinity itself and would hide which of them set the number.
fn online_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory under the system temp dir, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("coldbrew-container-{}-{n}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }

        fn write(&self, file: &str, contents: &str) -> &Tree {
            let path = self.0.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
            self
        }

        fn mkdir(&self, dir: &str) -> &Tree {
            std::fs::create_dir_all(self.0.join(dir)).unwrap();
            self
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// /proc/self/cgroup of a process in `/a/b` in every hierarchy.
    fn nested() -> Membership {
        Membership::parse("12:memory:/a/b\n3:cpu,cpuacct:/a/b\n1:name=systemd:/a/b\n0::/a/b\n")
    }

    fn at_root() -> Membership {
        Membership::parse("4:memory:/\n2:cpu,cpuacct:/\n0::/\n")
    }

    /// cpu and memory as `in_tree` finds them, read like `probe` does.
    fn limits(root: &Path, membership: &Membership) -> (Option<f64>, Option<u64>, Option<u8>) {
        let cpu = in_tree(root, "cpu", membership);
        let memory = in_tree(root, "memory", membership);
        (
            cpu.as_ref().and_then(Cgroup::cpu_quota),
            memory.as_ref().and_then(Cgroup::memory_limit),
            cpu.as_ref().or(memory.as_ref()).map(|c| c.version),
        )
    }

    fn resources(cpu_quota: Option<f64>, cgroup_version: Option<u8>, affinity: Option<usize>, cores: usize) -> Resources {
        Resources { cpu_quota, cpu_quota_source: None, memory_limit: None, affinity, cores, cgroup_version }
    }

    #[test]
    fn file_formats() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("0 100000"), None);
        assert_eq!(parse_cpu_max("150000 0"), None);
        assert_eq!(parse_cpu_max("150000"), None);
        assert_eq!(parse_cpu_max("150000 100000 7"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("150000", "0"), None);
        assert_eq!(parse_cfs("lots", "100000"), None);
        assert_eq!(parse_memory("536870912\n"), Some(536_870_912));
        assert_eq!(parse_memory("max\n"), None);
        assert_eq!(parse_memory("9223372036854771712\n"), None);
        assert_eq!(parse_memory("9223372036854775807"), None);
        assert_eq!(parse_memory("-1"), None);
        assert_eq!(parse_memory("\u{0}\u{1}garbage"), None);
    }

    #[test]
    fn v2_quota_and_memory() {
        let tree = Tree::new("v2");
        tree.write("cgroup.controllers", "cpuset cpu io memory pids\n")
            .write("cpu.max", "150000 100000\n")
            .write("memory.max", "536870912\n");
        assert_eq!(limits(&tree.0, &at_root()), (Some(1.5), Some(536_870_912), Some(2)));
    }

    #[test]
    fn v2_without_limits() {
        let tree = Tree::new("v2-max");
        tree.write("cgroup.controllers", "cpu memory\n").write("cpu.max", "max 100000\n").write("memory.max", "max\n");
        assert_eq!(limits(&tree.0, &at_root()), (None, None, Some(2)));
        let empty = Tree::new("v2-empty");
        empty.write("cgroup.controllers", "");
        assert_eq!(limits(&empty.0, &at_root()), (None, None, Some(2)));
    }

    #[test]
    fn v2_parent_limits_apply_to_the_own_cgroup() {
        let tree = Tree::new("v2-nested");
        tree.write("cgroup.controllers", "cpu memory\n")
            .write("a/cpu.max", "250000 100000\n")
            .write("a/memory.max", "1073741824\n")
            .write("a/b/cpu.max", "max 100000\n")
            .write("a/b/memory.max", "max\n");
        assert_eq!(limits(&tree.0, &nested()), (Some(2.5), Some(1 << 30), Some(2)));
        // The own cgroup's tighter limit wins over the parent's, and the parent's over a looser own.
        tree.write("a/b/cpu.max", "50000 100000\n").write("a/b/memory.max", "2147483648\n");
        assert_eq!(limits(&tree.0, &nested()), (Some(0.5), Some(1 << 30), Some(2)));
        // A sibling's limits are not the process's.
        tree.write("a/c/cpu.max", "10000 100000\n");
        assert_eq!(limits(&tree.0, &nested()).0, Some(0.5));
    }

    #[test]
    fn v2_own_cgroup_missing_falls_back_to_the_top() {
        let tree = Tree::new("v2-top");
        tree.write("cgroup.controllers", "cpu\n").write("cpu.max", "300000 100000\n");
        assert_eq!(limits(&tree.0, &nested()), (Some(3.0), None, Some(2)));
    }

    #[test]
    fn v1_quota_and_memory() {
        let tree = Tree::new("v1");
        tree.write("cpu/cpu.cfs_quota_us", "150000\n")
            .write("cpu/cpu.cfs_period_us", "100000\n")
            .write("memory/memory.limit_in_bytes", "268435456\n");
        assert_eq!(limits(&tree.0, &at_root()), (Some(1.5), Some(268_435_456), Some(1)));
    }

    #[test]
    fn v1_without_limits() {
        let tree = Tree::new("v1-none");
        tree.write("cpu/cpu.cfs_quota_us", "-1\n")
            .write("cpu/cpu.cfs_period_us", "100000\n")
            .write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(limits(&tree.0, &at_root()), (None, None, Some(1)));
    }

    #[test]
    fn v1_combined_cpu_cpuacct_mount() {
        let tree = Tree::new("v1-combined");
        tree.write("cpu,cpuacct/cpu.cfs_quota_us", "200000\n").write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        assert_eq!(limits(&tree.0, &at_root()), (Some(2.0), None, Some(1)));
    }

    #[test]
    fn v1_parent_limits_apply_to_the_own_cgroup() {
        let tree = Tree::new("v1-nested");
        tree.write("cpu,cpuacct/a/cpu.cfs_quota_us", "50000\n")
            .write("cpu,cpuacct/a/cpu.cfs_period_us", "100000\n")
            .write("cpu,cpuacct/a/b/cpu.cfs_quota_us", "-1\n")
            .write("cpu,cpuacct/a/b/cpu.cfs_period_us", "100000\n")
            .write("memory/memory.limit_in_bytes", "9223372036854771712\n")
            .write("memory/a/b/memory.limit_in_bytes", "104857600\n");
        assert_eq!(limits(&tree.0, &nested()), (Some(0.5), Some(104_857_600), Some(1)));
    }

    #[test]
    fn memory_only_tree_reports_its_version() {
        let tree = Tree::new("v1-memory");
        tree.write("memory/memory.limit_in_bytes", "104857600\n");
        assert_eq!(limits(&tree.0, &at_root()), (None, Some(104_857_600), Some(1)));
    }

    #[test]
    fn garbage_and_missing_files_mean_no_limit() {
        let tree = Tree::new("garbage");
        tree.write("cgroup.controllers", "cpu memory\n")
            .write("cpu.max", "one and a half\n")
            .write("memory.max", "\u{7f}ELF\u{0}\u{0}");
        assert_eq!(limits(&tree.0, &at_root()), (None, None, Some(2)));
        // Not UTF-8, and longer than any real cgroup file.
        std::fs::write(tree.path("cpu.max"), [0xff, 0xfe, 0x00]).unwrap();
        std::fs::write(tree.path("memory.max"), "1".repeat(100_000)).unwrap();
        assert_eq!(limits(&tree.0, &at_root()), (None, None, Some(2)));
        // A directory where a file should be.
        std::fs::remove_file(tree.path("cpu.max")).unwrap();
        tree.mkdir("cpu.max");
        assert_eq!(limits(&tree.0, &at_root()), (None, None, Some(2)));

        let v1 = Tree::new("garbage-v1");
        v1.write("cpu/cpu.cfs_quota_us", "150000\n").write("cpu/cpu.cfs_period_us", "soon\n").mkdir("memory");
        assert_eq!(limits(&v1.0, &at_root()), (None, None, Some(1)));

        let empty = Tree::new("empty");
        assert_eq!(limits(&empty.0, &at_root()), (None, None, None));
        let missing = empty.path("does-not-exist");
        assert_eq!(limits(&missing, &at_root()), (None, None, None));
    }

    #[test]
    fn a_fifo_does_not_block() {
        let tree = Tree::new("fifo");
        tree.write("cgroup.controllers", "cpu\n");
        let fifo = std::ffi::CString::new(tree.path("cpu.max").into_os_string().into_vec()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(limits(&tree.0, &at_root()).0, None);
    }

    #[test]
    fn probe_reads_a_made_up_tree() {
        // The test process's own cgroup is not in the tree, so its top stands in for it.
        let tree = Tree::new("probe");
        tree.write("cgroup.controllers", "cpu memory\n").write("cpu.max", "150000 100000\n").write("memory.max", "max\n");
        let r = probe(Some(&tree.0));
        assert_eq!(r.cpu_quota, Some(1.5));
        assert_eq!(r.cpu_quota_source, Some("cgroup v2 cpu.max"));
        assert_eq!(r.memory_limit, None);
        assert_eq!(r.cgroup_version, Some(2));
        assert!(r.cores >= 1);

        let v1 = Tree::new("probe-v1");
        v1.write("cpu/cpu.cfs_quota_us", "-1\n").write("cpu/cpu.cfs_period_us", "100000\n");
        let r = probe(Some(&v1.0));
        assert_eq!((r.cpu_quota, r.cpu_quota_source, r.cgroup_version), (None, None, Some(1)));
    }

    #[test]
    fn probe_reads_the_real_system() {
        let r = probe(None);
        assert!(r.cores >= 1);
        let affinity = r.affinity.expect("sched_getaffinity works on Linux");
        assert!(affinity >= 1 && affinity <= r.cores);
        assert_eq!(r.cpu_quota.is_some(), r.cpu_quota_source.is_some());
    }

    #[test]
    fn membership_lines() {
        let m = Membership::parse("9:name=systemd:/\n3:cpu,cpuacct:/kube/pod:odd\n4:memory:/m\n0::/u/v\n\ngarbage\n");
        assert_eq!(m.unified.as_deref(), Some("/u/v"));
        assert_eq!(m.v1_path("cpu"), Some("/kube/pod:odd"));
        assert_eq!(m.v1_path("cpuacct"), Some("/kube/pod:odd"));
        assert_eq!(m.v1_path("memory"), Some("/m"));
        assert_eq!(m.v1_path("cpuset"), None);
        let v1_only = Membership::parse("2:cpu:/\n");
        assert_eq!(v1_only.unified, None);
    }

    #[test]
    fn mountinfo_lines() {
        let mounts = parse_mountinfo(
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
             32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
             41 31 0:38 /kube/pod /sys/fs/cgroup/my\\040dir rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n\
             truncated line -\n",
        );
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(mounts[0].super_options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(mounts[1].root, Path::new("/kube/pod"));
        assert_eq!(mounts[1].point, Path::new("/sys/fs/cgroup/my dir"));
        assert_eq!(mounts[1].fstype, "cgroup2");
    }

    /// A mountinfo line for a cgroup mount at `point`.
    fn mount_line(point: &Path, root: &str, fstype: &str, options: &str) -> String {
        format!("40 31 0:38 {root} {} rw,relatime - {fstype} {fstype} {options}\n", point.display())
    }

    #[test]
    fn hybrid_host_prefers_the_hierarchy_with_the_controller() {
        // Like this project's CI machine: v1 controllers, and a cgroup2 mount with none of ours.
        let tree = Tree::new("hybrid");
        tree.write("unified/cgroup.controllers", "hugetlb\n")
            .write("unified/cpu.stat", "usage_usec 0\n")
            .write("cpu/cpu.cfs_quota_us", "150000\n")
            .write("cpu/cpu.cfs_period_us", "100000\n")
            .write("memory/m/memory.limit_in_bytes", "104857600\n");
        let mountinfo = [
            mount_line(&tree.path("cpu"), "/", "cgroup", "rw,cpu"),
            mount_line(&tree.path("cpuacct"), "/", "cgroup", "rw,cpuacct"),
            mount_line(&tree.path("memory"), "/", "cgroup", "rw,memory"),
            mount_line(&tree.path("unified"), "/", "cgroup2", "rw"),
        ]
        .concat();
        let mounts = parse_mountinfo(&mountinfo);
        let membership = Membership::parse("4:memory:/m\n2:cpuacct:/\n1:cpu:/\n0::/\n");
        let cpu = on_system("cpu", &membership, &mounts).unwrap();
        assert_eq!((cpu.version, cpu.cpu_quota()), (1, Some(1.5)));
        let memory = on_system("memory", &membership, &mounts).unwrap();
        assert_eq!((memory.version, memory.memory_limit()), (1, Some(104_857_600)));
        assert!(on_system("pids", &membership, &mounts).is_none());

        // Once cgroup2 lists the controller, it is the one that counts.
        tree.write("unified/cgroup.controllers", "cpu memory hugetlb\n").write("unified/cpu.max", "max 100000\n");
        let cpu = on_system("cpu", &membership, &mounts).unwrap();
        assert_eq!((cpu.version, cpu.cpu_quota()), (2, None));
    }

    #[test]
    fn v2_namespaced_mount_root() {
        // With a cgroup namespace (or a bind mount of the pod's cgroup), the mount shows
        // /kubepods/pod1 at its mount point and the process lives in /kubepods/pod1/ctr.
        let tree = Tree::new("v2-ns");
        tree.write("cgroup.controllers", "cpu memory\n")
            .write("cpu.max", "400000 100000\n")
            .write("ctr/cpu.max", "max 100000\n")
            .write("ctr/memory.max", "268435456\n");
        let mounts = parse_mountinfo(&mount_line(&tree.0, "/kubepods/pod1", "cgroup2", "rw,nsdelegate"));
        let membership = Membership::parse("0::/kubepods/pod1/ctr\n");
        let cpu = on_system("cpu", &membership, &mounts).unwrap();
        assert_eq!(cpu.dir, tree.path("ctr"));
        assert_eq!((cpu.version, cpu.cpu_quota()), (2, Some(4.0)));
        assert_eq!(on_system("memory", &membership, &mounts).unwrap().memory_limit(), Some(268_435_456));

        // A path outside the mounted part, or one climbing out of it, falls back to the mount point.
        for path in ["0::/elsewhere\n", "0::/kubepods/pod1/../../x\n"] {
            let cpu = on_system("cpu", &Membership::parse(path), &mounts).unwrap();
            assert_eq!(cpu.dir, tree.0);
        }
    }

    #[test]
    fn v1_mount_of_the_containers_own_cgroup() {
        // Docker without a cgroup namespace: /proc/self/cgroup names /docker/abc, and that is
        // the root of the mount.
        let tree = Tree::new("v1-docker");
        tree.write("cpu.cfs_quota_us", "50000\n").write("cpu.cfs_period_us", "100000\n");
        let other = Tree::new("v1-docker-other");
        let mountinfo = [
            mount_line(&other.0, "/other", "cgroup", "rw,cpu,cpuacct"),
            mount_line(&tree.0, "/docker/abc", "cgroup", "rw,cpu,cpuacct"),
        ]
        .concat();
        let membership = Membership::parse("3:cpu,cpuacct:/docker/abc\n");
        let cpu = on_system("cpu", &membership, &parse_mountinfo(&mountinfo)).unwrap();
        assert_eq!(cpu.dir, tree.0);
        assert_eq!(cpu.cpu_quota(), Some(0.5));
    }

    #[test]
    fn web_concurrency_wins() {
        let r = resources(Some(1.5), Some(2), Some(2), 8);
        assert_eq!(default_workers(Some("3"), &r), Ok((3, "WEB_CONCURRENCY=3".to_string())));
        assert_eq!(default_workers(Some(" 12\n"), &r), Ok((12, "WEB_CONCURRENCY=12".to_string())));
    }

    #[test]
    fn bad_web_concurrency_is_one_line() {
        let r = resources(None, None, None, 2);
        for (value, shown) in [("abc", "'abc'"), ("0", "'0'"), ("-2", "'-2'"), ("1.5", "'1.5'"), ("", "''"), ("2\nx", "'2\\nx'")] {
            let err = default_workers(Some(value), &r).unwrap_err();
            assert_eq!(err, format!("WEB_CONCURRENCY: expected a positive integer, got {shown}"));
            assert!(!err.contains('\n'));
        }
        assert!(default_workers(Some("99999999999999999999999"), &r).is_err());
    }

    #[test]
    fn quota_rounds_up() {
        let cases = [
            (1.5, Some(2), 2, "cgroup v2 quota 1.5 CPU"),
            (0.5, Some(2), 1, "cgroup v2 quota 0.5 CPU"),
            (0.01, Some(1), 1, "cgroup v1 quota 0.01 CPU"),
            (2.0, Some(1), 2, "cgroup v1 quota 2 CPU"),
            (2.0 / 3.0, None, 1, "cgroup quota 0.667 CPU"),
        ];
        for (quota, version, workers, reason) in cases {
            let r = resources(Some(quota), version, Some(8), 8);
            assert_eq!(default_workers(None, &r), Ok((workers, reason.to_string())));
        }
        // Exact multiples of the period stay whole numbers.
        let r = resources(parse_cfs("300000", "100000"), Some(1), None, 8);
        assert_eq!(default_workers(None, &r).unwrap().0, 3);
    }

    #[test]
    fn affinity_then_cores() {
        assert_eq!(default_workers(None, &resources(None, Some(1), Some(2), 8)), Ok((2, "CPU affinity 2".to_string())));
        assert_eq!(default_workers(None, &resources(None, Some(1), Some(1), 2)), Ok((1, "CPU affinity 1".to_string())));
        assert_eq!(default_workers(None, &resources(None, Some(1), Some(4), 4)), Ok((4, "4 cores".to_string())));
        assert_eq!(default_workers(None, &resources(None, Some(1), None, 4)), Ok((4, "4 cores".to_string())));
        assert_eq!(default_workers(None, &resources(None, None, Some(0), 1)), Ok((1, "1 core".to_string())));
        assert_eq!(default_workers(None, &resources(None, None, None, 0)), Ok((1, "1 core".to_string())));
        // A quota that is not a number of CPUs is ignored.
        assert_eq!(default_workers(None, &resources(Some(f64::NAN), None, Some(3), 8)).unwrap().0, 3);
    }
}
