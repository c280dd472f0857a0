"""``fleetgate demo [--scenario NAME] [--devices N] [--channel http|mqtt] [--yes]``

See ``fleetgate.sim.demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from fleetgate.sim.demo import CHANNELS, DEFAULT_BROKER, SCENARIOS

    p = sub.add_parser("demo", help="a whole deployment on a simulated fleet")
    p.add_argument("--scenario", choices=SCENARIOS, default="happy")
    p.add_argument("--devices", type=int, default=60, help="fleet size (default 60)")
    p.add_argument("--agents", type=int, default=3, help="how many are real agent processes")
    p.add_argument(
        "--channel",
        choices=CHANNELS,
        default="http",
        help="how the controller reaches devices: HTTP, or an MQTT broker they dial out to",
    )
    p.add_argument(
        "--broker",
        default=DEFAULT_BROKER,
        metavar="URL",
        help=f"with --channel mqtt: the broker (default {DEFAULT_BROKER})",
    )
    p.add_argument("--yes", action="store_true", help="approve the fleet rollout without asking")
    p.set_defaults(handler=cmd_demo)


def _ask(prompt: str) -> bool:
    if not sys.stdin.isatty():
        print(f"{prompt}(no terminal: not approved; use --yes)", file=sys.stderr)
        return False
    return input(prompt).strip().lower() in ("y", "yes")


async def cmd_demo(args: argparse.Namespace) -> int:
    from fleetgate.api.embedded import api_in_process
    from fleetgate.errors import InputError
    from fleetgate.sim.demo import run_demo

    if args.devices < 2:
        raise InputError("--devices: a staged rollout needs at least 2 devices")
    if args.db.startswith("sqlite") and ":///" in args.db:
        Path(args.db.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    result = await run_demo(
        args.db,
        args.scenario,
        args.devices,
        yes=args.yes,
        agents=args.agents,
        channel=args.channel,
        broker=args.broker,
        ask=_ask,
        say=lambda line: print(f"demo: {line}", file=sys.stderr),
        serve_api=api_in_process,
    )
    sys.stdout.write(result.report)
    print(f"demo: deployment {result.deployment_id} ended {result.phase}", file=sys.stderr)
    return result.exit_code
