//! The workspace's binaries (`cplane`, `cplane-agent`) for the end-to-end tests, built fresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of the workspace binary `name` (`cplane`, `cplane-agent`), built from the current
/// sources.
///
/// Cargo sets `CARGO_BIN_EXE_<name>` only for the tests of the package that owns the binary, so
/// the end-to-end tests, a package of their own, find the binaries this way:
///
/// 1. The target directory and profile are those of this test executable: `current_exe()` is
///    `<target>/<profile>/deps/<test>-<hash>`, and the binaries are `<target>/<profile>/<name>`.
/// 2. Under cargo (`cargo test` sets `CARGO` for the tests it runs), the first call in a test
///    process runs `cargo build --workspace --bins --examples --locked` with that target
///    directory and profile, and takes the paths from cargo's own report of what it built. After
///    `cargo test --workspace` (the README's test command, which CI runs) everything is fresh
///    and this takes about half a second; after `cargo test -p cplane-e2e`, which does not build
///    the other packages' binaries, it rebuilds those whose sources changed. Either way no test
///    runs a stale binary.
/// 3. Without cargo (a test executable run by hand), the binary must already be at
///    `<target>/<profile>/<name>`; it is used as it is, fresh or not.
///
/// `--examples` is there for the features: like `cargo test`, a build that includes examples
/// turns the dev-dependencies' features on, so cargo unifies features exactly as
/// `cargo test --workspace` did and finds the very units it built. (A plain
/// `cargo build -p cplane-reconciler --bin cplane` resolves features differently and compiles
/// the binary and much of its dependency tree a second time, minutes on a small machine.)
///
/// # Panics
/// When cargo fails to build the binaries, or `name` is not a binary of the workspace.
pub fn cargo_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    let layout = Layout::of_current_exe();
    let built = BUILT.get_or_init(|| match std::env::var_os("CARGO") {
        Some(cargo) => build(Path::new(&cargo), &layout),
        None => BTreeMap::new(),
    });
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let path = layout.profile_dir.join(name);
    assert!(
        built.is_empty(),
        "`{name}` is not a binary of the workspace (cargo built {:?})",
        built.keys().collect::<Vec<_>>()
    );
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test`, or `cargo build --bins` first",
        path.display()
    );
    path
}

/// Where the test executable lives: `<target_dir>/<profile_dir name>/deps/`.
struct Layout {
    target_dir: PathBuf,
    profile_dir: PathBuf,
}

impl Layout {
    fn of_current_exe() -> Self {
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is in <target>/<profile>/deps/")
            .to_owned();
        let target_dir = profile_dir
            .parent()
            .expect("the profile directory is in the target directory")
            .to_owned();
        Self {
            target_dir,
            profile_dir,
        }
    }

    /// The cargo flag that selects the profile whose output is in `profile_dir`.
    fn profile_args(&self) -> Vec<String> {
        match self.profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => Vec::new(),
            Some("release") => vec!["--release".into()],
            Some(custom) => vec!["--profile".into(), custom.into()],
        }
    }
}

/// Builds the workspace's binaries with `cargo`; returns each binary's path, by name.
fn build(cargo: &Path, layout: &Layout) -> BTreeMap<String, PathBuf> {
    let manifest = super::root().join("Cargo.toml");
    let out = Command::new(cargo)
        .args(["build", "--locked", "--workspace", "--bins", "--examples"])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&layout.target_dir)
        .args(layout.profile_args())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build of the workspace's binaries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bins = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_bin = msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        if msg["reason"] != "compiler-artifact" || !is_bin {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            bins.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    assert!(
        !bins.is_empty(),
        "cargo build reported no binaries:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bins
}
