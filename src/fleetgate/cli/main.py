"""The ``fleetgate`` command.

Each topic lives in its own module (``cli/registry_cmd.py``, ``cli/deploy_cmd.py`` …) exposing
``register(subparsers)``; a sub-command's handler takes the parsed ``argparse.Namespace`` and
returns an exit code. Handlers may be coroutines: they are run with ``asyncio.run``.

Exit codes (DESIGN.md): 0 ok/complete, 1 PARTIAL, 2 usage or input error, 3 halted/rolled
back/aborted, 4 waiting for approval, 5 internal error. A ``FleetgateError`` that is the user's
fault prints one line per problem on stderr and no traceback. A ``GuardrailError`` is a refusal,
not a failure of fleetgate: it exits 3 like a halt (a blocked plan, a new deployment while a
rollback failure is unresolved). Commands that read a file the user named turn an
``IntegrityError`` about it into an ``InputError`` themselves (``deploy start``, ``artifact
verify``); one that reaches this dispatcher is about data fleetgate keeps, so it stays 5.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

from fleetgate.errors import FleetgateError, GuardrailError, InputError

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_INPUT = 2
EXIT_HALTED = 3
EXIT_WAITING = 4
EXIT_INTERNAL = 5

# Topic modules, imported lazily so `fleetgate agent run` on a device never imports the
# controller's dependencies (SQLAlchemy, rich, …).
TOPICS: dict[str, str] = {
    "keys": "fleetgate.cli.keys_cmd",
    "artifact": "fleetgate.cli.artifact_cmd",
    "registry": "fleetgate.cli.registry_cmd",
    "deploy": "fleetgate.cli.deploy_cmd",
    "audit": "fleetgate.cli.audit_cmd",
    "agent": "fleetgate.cli.agent_cmd",
    "sim": "fleetgate.cli.sim_cmd",
    "demo": "fleetgate.cli.demo_cmd",
    "serve": "fleetgate.cli.serve_cmd",
    "users": "fleetgate.cli.users_cmd",
    "enroll": "fleetgate.cli.enroll_cmd",
    "broker": "fleetgate.cli.broker_cmd",
}

DEFAULT_DB = "sqlite+aiosqlite:///.fleetgate/fleetgate.db"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own exit code would be 2 as well
        self.print_usage(sys.stderr)
        print(f"fleetgate: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_INPUT)


def build_parser(topic: str | None) -> argparse.ArgumentParser:
    parser = _Parser(prog="fleetgate", description="Staged, health-gated fleet rollouts.")
    parser.add_argument(
        "--db",
        default=os.environ.get("FLEETGATE_DB", DEFAULT_DB),
        help="store URL (env FLEETGATE_DB); default: SQLite under ./.fleetgate/",
    )
    sub = parser.add_subparsers(dest="topic", metavar="TOPIC", parser_class=_Parser)
    import importlib

    for name, module in TOPICS.items():
        if topic is not None and name != topic:
            sub.add_parser(name, help=f"({name} commands)")
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # topic not built yet
        mod.register(sub)
    return parser


def _topic_of(argv: Sequence[str]) -> str | None:
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--db":
            skip = True
            continue
        if arg.startswith("-"):
            continue
        return arg if arg in TOPICS else None
    return None


def run(argv: Sequence[str]) -> int:
    parser = build_parser(_topic_of(argv))
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    try:
        result = handler(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except InputError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"fleetgate: error: {line}", file=sys.stderr)
        return EXIT_INPUT
    except GuardrailError as exc:
        print(f"fleetgate: error: {exc}", file=sys.stderr)
        return EXIT_HALTED
    except FleetgateError as exc:
        print(f"fleetgate: error: {exc}", file=sys.stderr)
        return EXIT_HALTED if exc.deployment_id else EXIT_INTERNAL
    except KeyboardInterrupt:
        print("fleetgate: interrupted", file=sys.stderr)
        return 130


def person(name: str | None, flag: str = "--as") -> str:
    """A human's name as the audit log records it (``--as NAME``): stripped, never blank."""
    cleaned = (name or "").strip()
    if not cleaned:
        raise InputError(f"{flag}: a blank name does not name a person; give {flag} NAME")
    return cleaned


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
