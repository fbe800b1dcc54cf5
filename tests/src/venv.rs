//! Python tools for tests (moto's server, kubernetes-validate), each installed once into a venv
//! under `~/.cache`; test processes installing at the same time wait on a lock directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// `~/.cache/<name>` (the temporary directory when there is no home).
pub fn cache_dir(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join(name)
}

/// The executable `bin` of the venv `~/.cache/<venv>`, after `pip install <requirement>` into it
/// when it is missing.
pub fn ensure(venv: &str, requirement: &str, bin: &str) -> PathBuf {
    let dir = cache_dir(venv);
    let exe = dir.join("bin").join(bin);
    if exe.exists() {
        return exe;
    }
    let lock = dir.with_extension("lock");
    let started = Instant::now();
    while std::fs::create_dir(&lock).is_err() {
        if exe.exists() {
            return exe;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "waiting for another install of {requirement} ({})",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    if !exe.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", requirement])
                .status()
                .is_ok_and(|s| s.success());
        let _ = std::fs::remove_dir(&lock);
        assert!(ok, "installing {requirement} into {} failed", dir.display());
    } else {
        let _ = std::fs::remove_dir(&lock);
    }
    exe
}
