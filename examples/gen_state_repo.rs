//! Generates a synthetic state repo for benchmarks: N workspaces over M live regions, committed.
//!
//! ```sh
//! cargo run --release -p cplane-reconciler --example gen_state_repo -- /tmp/big 10000 4
//! cplane validate --repo /tmp/big
//! ```
//!
//! A fourth argument picks the workspaces' shape (`mixed`, the default, `acme-copies`,
//! `every-stack`, `distinct-values`: see `synthetic::Tenants`), as the validate bench does.

use std::path::PathBuf;

use cplane_reconciler::synthetic::{generate_with, Shape, Tenants};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gen_state_repo DIR [WORKSPACES=10000] [REGIONS=4] [SHAPE=mixed]";
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let workspaces = args
        .next()
        .map_or(Ok(10_000), |a| a.parse())
        .map_err(|_| usage)?;
    let regions = args
        .next()
        .map_or(Ok(4), |a| a.parse())
        .map_err(|_| usage)?;
    let tenants = match args.next() {
        None => Tenants::Mixed,
        Some(name) => Tenants::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Tenants::ALL.iter().map(|t| t.name()).collect();
                format!("unknown shape `{name}` (one of {})", names.join(", "))
            })?,
    };
    if dir.exists() {
        return Err(format!("{} exists; pick a new directory", dir.display()).into());
    }
    let commit = generate_with(
        &dir,
        Shape {
            workspaces,
            regions,
        },
        tenants,
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
        "{}: {workspaces} {} workspaces over {regions} regions, commit {commit}",
        dir.display(),
        tenants.name()
    );
    Ok(())
}
