"""``fleetgate agent run --config agent.toml`` — the device agent's entry point.

Import-light: this module is imported by the CLI dispatcher when the topic is ``agent`` and
must not pull in anything controller-only; the agent itself (aiohttp, the service) is imported
only inside the handler. A bad config is a ``ValidationError`` naming the file and the field
(exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("agent", help="run the device agent")
    sub = parser.add_subparsers(dest="agent_command", metavar="COMMAND")
    run = sub.add_parser("run", help="serve the agent protocol on this device")
    run.add_argument("--config", required=True, help="path to agent.toml")
    run.set_defaults(handler=_run)
    check = sub.add_parser("check", help="validate agent.toml and print the effective settings")
    check.add_argument("--config", required=True, help="path to agent.toml")
    check.set_defaults(handler=_check)


async def _run(args: argparse.Namespace) -> int:
    from fleetgate.agent.config import load_config
    from fleetgate.agent.server import serve

    config = load_config(args.config)
    return await serve(config)


def _check(args: argparse.Namespace) -> int:
    from fleetgate.agent.config import load_config
    from fleetgate.agent.server import dump_config
    from fleetgate.artifacts.keys import load_public_key

    config = load_config(args.config)
    load_public_key(config.public_key)  # `run` parses the key lazily; `check` proves it now
    print(dump_config(config))
    return 0
