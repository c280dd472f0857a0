"""How long does ``fleetgate deploy plan`` take for a large inventory?

Writes a synthetic N-device fleet.yaml (default 10,000: Jetson/RPi/gateway mix over 12 sites,
~3 % critical, ~2 % in maintenance), then times, as real subprocesses (what a user waits for):

1. ``registry import`` into a fresh SQLite store;
2. ``deploy plan`` reading the inventory from the store;
3. ``deploy plan --registry FILE`` reading the YAML directly;

and, in-process, the pure planner alone (``plan_deployment``) so its share is visible.

Usage: ``.venv/bin/python bench/plan_bench.py [--devices 10000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLEETGATE = [sys.executable, "-m", "fleetgate"]
MIX = [
    ("jetson-orin-nano", "arm64", 8192, True),
    ("rpi4", "arm64", 4096, False),
    ("gateway", "x86_64", 16384, False),
]


def write_fleet(path: Path, n: int) -> None:
    lines = ["devices:"]
    for i in range(n):
        hw, arch, ram, gpu = MIX[i % 3]
        state = "maintenance" if i % 50 == 7 else "active"
        lines += [
            f"  - id: dev-{i:06d}",
            f"    hardware: {hw}",
            f"    arch: {arch}",
            f"    group: site-{i % 12:02d}",
            f"    address: http://127.0.0.1:{20000 + i % 40000}",
            "    token_env: FLEETGATE_TOKEN",
            f"    resources: {{ram_mb: {ram}, disk_mb: 64000, gpu: {str(gpu).lower()}}}",
            '    software: {jetpack: "6.0", os: ubuntu-22.04}',
            f"    monitoring: {('high', 'medium', 'low')[i % 7 % 3]}",
            f"    critical: {'true' if i % 33 == 0 else 'false'}",
            f"    state: {state}",
        ]
    path.write_text("\n".join(lines) + "\n")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Path(tmp) / "fleet.yaml"
        write_fleet(fleet, args.devices)
        env = {**os.environ, "FLEETGATE_DB": f"sqlite+aiosqlite:///{tmp}/fg.db"}
        app = str(ROOT / "examples" / "app")
        policy = str(ROOT / "examples" / "rollout.toml")
        imp = timed([*FLEETGATE, "registry", "import", str(fleet)], env)
        store = [
            timed([*FLEETGATE, "deploy", "plan", app, "--policy", policy, "--json"], env)
            for _ in range(args.repeat)
        ]
        direct = [
            timed(
                [
                    *FLEETGATE,
                    "deploy",
                    "plan",
                    app,
                    "--policy",
                    policy,
                    "--json",
                    "--registry",
                    str(fleet),
                ],
                env,
            )
            for _ in range(args.repeat)
        ]

        from fleetgate.config.manifest_file import load_artifact_manifest
        from fleetgate.config.policy_file import load_policy
        from fleetgate.core.plan import plan_deployment
        from fleetgate.registry import load_inventory

        devices = load_inventory(fleet)
        manifest = load_artifact_manifest(Path(app))
        pol = load_policy(Path(policy))
        pure = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            plan = plan_deployment(devices, manifest, pol)
            pure.append(time.perf_counter() - t0)
    print(
        f"devices: {args.devices}  (targeted {len(plan.targeted)}, "
        f"canaries {len(plan.canaries)}, waves {[len(w.devices) for w in plan.waves]})"
    )
    print(f"registry import (CLI, SQLite):            {imp:.2f} s")
    print(f"deploy plan from store (CLI, best of {args.repeat}):  {min(store):.2f} s")
    print(f"deploy plan --registry YAML (CLI, best):  {min(direct):.2f} s")
    print(f"plan_deployment alone (in-process, best): {1000 * min(pure):.0f} ms")


if __name__ == "__main__":
    main()
