#!/usr/bin/env bash
# Quickstart: build cplane, create a state repo from the template (a local git repo), validate
# every document and render every cluster, then show one platform and one tenant bundle.
# Everything stays under ./.cplane-demo (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cplane-target}"
cargo build --quiet --release -p cplane-reconciler
cplane="$CARGO_TARGET_DIR/release/cplane"
demo="${1:-.cplane-demo}"
state="$demo/state"

if [ ! -d "$state/.git" ]; then
  "$cplane" init "$state"
fi
echo "== cplane validate --repo $state"
"$cplane" validate --repo "$state"
echo "== cplane clusters --repo $state"
"$cplane" clusters --repo "$state"
echo "== cplane render --cluster w-acme --out $demo/bundles/w-acme"
"$cplane" render --repo "$state" --cluster w-acme --out "$demo/bundles/w-acme"
echo "== cplane render --cluster prod-sgp-1 --out $demo/bundles/prod-sgp-1"
"$cplane" render --repo "$state" --cluster prod-sgp-1 --out "$demo/bundles/prod-sgp-1"
echo
echo "Edit $state (e.g. add workspaces/umbrella.yaml), commit, and run:"
echo "  $cplane validate --repo $state"
