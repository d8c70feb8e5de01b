//! A memory-limited cgroup for a process under test, so a test can show that the process
//! stays within a limit (as a container's memory limit enforces it) instead of being
//! OOM-killed. cgroup v2 when the unified hierarchy has the memory controller, else cgroup v1's
//! memory controller. Needs root.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A cgroup of its own with a memory limit; removed when dropped (once its processes ended).
pub struct MemoryCgroup {
    path: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// Creates the cgroup `name` (made unique with the test's pid) limited to `limit` bytes.
    pub fn create(name: &str, limit: u64) -> Result<MemoryCgroup> {
        let unified = Path::new("/sys/fs/cgroup");
        let v2 = std::fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "memory"));
        let root = if v2 {
            unified.to_path_buf()
        } else {
            unified.join("memory")
        };
        if !root.join("cgroup.procs").exists() {
            bail!("no memory cgroup controller at {}", root.display());
        }
        let path = root.join(format!("streamward-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the cgroup {}", path.display()))?;
        let cgroup = MemoryCgroup { path, v2 };
        if v2 {
            cgroup.write("memory.max", &limit.to_string())?;
            // No swap: the limit is the memory the process may use, as in a pod.
            let _ = cgroup.write("memory.swap.max", "0");
        } else {
            cgroup.write("memory.limit_in_bytes", &limit.to_string())?;
            // The memory a process already uses moves with it (v2 leaves it behind, but the
            // process under test is small when it moves).
            let _ = cgroup.write("memory.move_charge_at_immigrate", "3");
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.path.join(file), value)
            .with_context(|| format!("writing {value} to {}", self.path.join(file).display()))
    }

    fn read(&self, file: &str) -> Result<String> {
        std::fs::read_to_string(self.path.join(file))
            .with_context(|| format!("reading {}", self.path.join(file).display()))
    }

    /// Moves the process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// How many times the kernel's OOM killer killed a process of the cgroup.
    pub fn oom_kills(&self) -> Result<u64> {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = self.read(file)?;
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .context(format!("no oom_kill in {file}: {text}"))?
            .trim()
            .parse()
            .context("oom_kill count")
    }

    /// The most memory the cgroup has used, in bytes.
    pub fn peak_bytes(&self) -> Result<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(file)?.trim().parse().context("peak memory")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Only an empty cgroup can be removed; the test's processes have ended by now.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!(
            "streamward-e2e: could not remove the cgroup {}",
            self.path.display()
        );
    }
}
