"""``fleetgate sim run``: serve a virtual fleet and write its inventory.

``--channel http`` (default) serves every device over HTTP; ``--channel mqtt --broker
mqtt://HOST:PORT`` connects every device to the broker instead, one connection each
(sim/mqtt_fleet.py), and the inventory's addresses are ``mqtt://HOST:PORT/<device-id>``.

Prints where the fleet listens, the inventory and token file paths, each fault with the number of
devices it hit, then a line ``ready`` (tests and scripts wait for it), and serves until SIGINT or
SIGTERM (exit 0). Bad flags or fault specs exit 2 with one line naming the problem.

``--token-file`` that already holds a token is reused, so a restarted simulator keeps working
with an inventory written before; otherwise a random token is written with mode 0600.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from fleetgate.errors import InputError
from fleetgate.sim.faults import parse_fault
from fleetgate.sim.fleetspec import DEFAULT_INITIAL_RELEASE, FleetSpec, parse_mix
from fleetgate.sim.server import VirtualFleet


def register(sub: Any) -> None:
    sim = sub.add_parser("sim", help="virtual fleet for tests, demos and benchmarks")
    cmds = sim.add_subparsers(dest="sim_cmd", metavar="COMMAND", parser_class=type(sim))
    run = cmds.add_parser("run", help="serve N virtual devices and write their inventory")
    run.add_argument("--devices", type=int, default=60, metavar="N")
    run.add_argument(
        "--mix",
        default="jetson-orin-nano:40,rpi4:40,gateway:20",
        help="hardware:weight,... (jetson-orin-nano, rpi4, rpi5, gateway)",
    )
    run.add_argument("--groups", default="plant-a,plant-b,plant-c", help="comma-separated")
    run.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="KIND[:key=value,...], repeatable; see docs/simulator.md",
    )
    run.add_argument("--registry-out", type=Path, required=True, metavar="FLEET_YAML")
    run.add_argument("--token-file", type=Path, default=None, metavar="PATH")
    run.add_argument(
        "--channel",
        choices=("http", "mqtt"),
        default="http",
        help="how devices are reached: an HTTP server here, or a broker they dial out to",
    )
    run.add_argument(
        "--broker",
        default=None,
        metavar="URL",
        help="with --channel mqtt: mqtt://HOST[:PORT] (default mqtt://127.0.0.1:1883)",
    )
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=0, help="0 = any free port")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--per-device-address",
        action="store_true",
        help="give each device its own 127.1.x.y address instead of a /d/<id> path",
    )
    run.add_argument("--initial-release", default=DEFAULT_INITIAL_RELEASE, metavar="ID")
    run.add_argument("--link-kbps", type=float, default=100_000.0, help="stage transfer speed")
    run.add_argument("--activate-s", type=float, default=0.0, help="simulated app start time")
    run.add_argument(
        "--public-key",
        type=Path,
        default=None,
        help="verify stage signatures (PEM key or root.json)",
    )
    run.set_defaults(handler=run_sim)
    sim.set_defaults(handler=lambda _a: _usage(sim))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _existing_token(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise InputError(f"--token-file {path}: cannot read: {exc.strerror or exc}") from None


def _absolute(path: Path) -> Path:
    return Path(path).absolute()


def spec_from_args(args: argparse.Namespace) -> FleetSpec:
    public_key = None
    if args.public_key is not None:
        from fleetgate.artifacts.root import load_trust

        public_key = load_trust(args.public_key)  # a PEM key or a root.json
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    return FleetSpec(
        devices=args.devices,
        mix=parse_mix(args.mix),
        groups=groups,
        faults=tuple(parse_fault(f) for f in args.fault),
        seed=args.seed,
        token=_existing_token(args.token_file) or secrets.token_urlsafe(24),
        initial_release=args.initial_release or None,
        link_kbps=args.link_kbps,
        activate_s=args.activate_s,
        per_device_address=args.per_device_address,
        public_key=public_key,
    )


async def run_sim(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.channel == "mqtt":
        if spec.per_device_address:
            raise InputError("--per-device-address: only with --channel http")
        from fleetgate.sim.mqtt_fleet import MqttFleet

        broker = args.broker or "mqtt://127.0.0.1:1883"
        async with MqttFleet.start(spec, broker) as mqtt_fleet:
            layout = f"{mqtt_fleet.connected()} connected, topics fleetgate/v1/<device-id>/..."
            return await _serve(args, mqtt_fleet, layout)
    if args.broker is not None:
        raise InputError("--broker: only with --channel mqtt")
    async with VirtualFleet.start(spec, host=args.host, port=args.port) as fleet:
        layout = "one address per device" if spec.per_device_address else "/d/<device-id>"
        return await _serve(args, fleet, layout)


async def _serve(args: argparse.Namespace, fleet: Any, layout: str) -> int:
    """Write the inventory, say where the fleet is, print ``ready``, serve until a signal."""
    spec = fleet.spec
    token_path = fleet.write_inventory(args.registry_out, args.token_file)
    print(f"fleetgate sim: {len(fleet.devices)} virtual devices (seed {spec.seed})")
    print(f"url: {fleet.url} ({layout})")
    print(f"inventory: {_absolute(args.registry_out)}")
    print(f"token file: {token_path}")
    for fault, hit in fleet.model.injected:
        print(f"fault: {fault} -> {len(hit)} device(s)")
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("fleetgate sim: stopping", flush=True)
    return 0
