#!/usr/bin/env bash
# Set up, then run the main job: a whole deployment (canary -> approval -> waves -> confirm) of a
# signed demo release on a simulated fleet of 60 devices, three of them real agent processes
# running the real demo app, with the embedded SQLite store under ./.fleetgate/.
# Other scenarios: bash scripts/demo.sh --scenario bad-canary|wave-degradation|unreachable|rollback-failure
# Over MQTT (every device dials out to the local Mosquitto on 127.0.0.1:1883): add --channel mqtt
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then set -- --yes; fi
exec .venv/bin/fleetgate demo "$@"
