#!/usr/bin/env bash
# Set up, then run the main job: a deployment plan of the example release on the example fleet,
# with the embedded SQLite store under ./.fleetgate/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/fleetgate registry import examples/fleet.yaml
.venv/bin/fleetgate deploy plan examples/app --policy examples/rollout.toml
