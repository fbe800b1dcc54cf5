//! Generates a synthetic state repo for benchmarks: N workspaces over M live regions, committed.
//!
//! ```sh
//! cargo run --release -p cplane-reconciler --example gen_state_repo -- /tmp/big 10000 4
//! cplane validate --repo /tmp/big
//! ```

use std::path::PathBuf;

use cplane_reconciler::synthetic::{generate, Shape};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gen_state_repo DIR [WORKSPACES=10000] [REGIONS=4]";
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let workspaces = args
        .next()
        .map_or(Ok(10_000), |a| a.parse())
        .map_err(|_| usage)?;
    let regions = args
        .next()
        .map_or(Ok(4), |a| a.parse())
        .map_err(|_| usage)?;
    if dir.exists() {
        return Err(format!("{} exists; pick a new directory", dir.display()).into());
    }
    let commit = generate(
        &dir,
        Shape {
            workspaces,
            regions,
        },
    )?;
    // Pack it, as a clone would be (loose objects make every reader several times slower).
    let packed = std::process::Command::new("git")
        .args(["repack", "-adq"])
        .current_dir(&dir)
        .status();
    if !packed.is_ok_and(|s| s.success()) {
        eprintln!("warning: `git repack` failed; the repo is left with loose objects");
    }
    println!(
        "{}: {workspaces} workspaces over {regions} regions, commit {commit}",
        dir.display()
    );
    Ok(())
}
