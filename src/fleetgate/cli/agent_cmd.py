"""``fleetgate agent run --config agent.toml`` — the device agent's entry point.

Import-light: this module is imported by the CLI dispatcher when the topic is ``agent`` and
must not pull in anything controller-only; the agent itself (aiohttp, the service) is imported
only inside the handler. A bad config is a ``ValidationError`` naming the file and the field
(exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from fleetgate.errors import InputError, IntegrityError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("agent", help="run the device agent")
    sub = parser.add_subparsers(dest="agent_command", metavar="COMMAND")
    strict = "refuse (exit 2) on any exposure warning: non-loopback listen without TLS, "
    strict += "token/key files others may read, trusted keys others may write"
    run = sub.add_parser("run", help="serve the agent protocol on this device")
    run.add_argument("--config", required=True, help="path to agent.toml")
    run.add_argument("--strict", action="store_true", help=strict)
    run.add_argument(
        "--broker",
        metavar="URL",
        help="reach the controller through this MQTT broker (mqtt://HOST:PORT or mqtts://…), "
        "overriding [mqtt] broker; the HTTP listener then runs only if agent.listen is set",
    )
    run.set_defaults(handler=_run)
    check = sub.add_parser("check", help="validate agent.toml and print the effective settings")
    check.add_argument("--config", required=True, help="path to agent.toml")
    check.add_argument("--strict", action="store_true", help=strict)
    check.set_defaults(handler=_check)
    reset = sub.add_parser(
        "reset-state",
        help="leave safe mode: write a new state.json with only last_seq (agent stopped)",
    )
    reset.add_argument("--config", required=True, help="path to agent.toml")
    reset.add_argument(
        "--last-seq",
        type=int,
        required=True,
        help="at least the highest seq any controller sent this device (older ones are refused)",
    )
    reset.set_defaults(handler=_reset_state)
    enr = sub.add_parser(
        "enroll",
        help="introduce this device to the controller with a one-time enrolment token",
    )
    enr.add_argument("--server", required=True, help="the controller, https://HOST:PORT")
    enr.add_argument("--token", required=True, help="from `fleetgate enroll create` (one use)")
    enr.add_argument("--id", dest="device_id", default=None, help="device id (default: hostname)")
    enr.add_argument(
        "--address",
        default=None,
        help="how the controller reaches this agent: http(s)://HOST:PORT or mqtt(s)://… "
        "(default: http://HOSTNAME:7601)",
    )
    enr.add_argument("--config", default="agent.toml", help="agent.toml to write or update")
    enr.add_argument("--hardware", default=None, help="hardware name (default: the board's model)")
    enr.add_argument("--group", default=None, help="check the token admits to this group")
    enr.add_argument("--ca-file", default=None, help="CA bundle that signed the server's cert")
    enr.set_defaults(handler=_enroll)
    sf = sub.add_parser(
        "send-facts", help="re-send this enrolled device's facts, signed with its key"
    )
    sf.add_argument("--server", required=True, help="the controller, https://HOST:PORT")
    sf.add_argument("--config", default="agent.toml", help="the enrolled agent.toml")
    sf.add_argument("--ca-file", default=None, help="CA bundle that signed the server's cert")
    sf.set_defaults(handler=_send_facts)


def _load_checked(args: argparse.Namespace) -> Any:
    """The config, its exposure warnings on stderr; with ``--strict`` a warning is an error."""
    import sys

    from fleetgate.agent.config import load_config
    from fleetgate.agent.hygiene import hygiene_warnings
    from fleetgate.errors import ValidationError

    config = load_config(args.config)
    warnings = hygiene_warnings(config)
    if warnings and args.strict:
        raise ValidationError([f"{w} [--strict]" for w in warnings])
    for line in warnings:
        print(f"fleetgate: warning: {line}", file=sys.stderr)
    return config


async def _run(args: argparse.Namespace) -> int:
    from fleetgate.agent.server import serve

    config = _load_checked(args)
    if args.broker:
        config = _with_broker(config, args.broker)
    return await serve(config)


def _with_broker(config: Any, broker: str) -> Any:
    """``--broker`` over the file: keeps ``[mqtt]``'s credential, else the device id as user."""
    import dataclasses

    from fleetgate.agent.config import MqttConfig
    from fleetgate.core.mqttwire import WireError, parse_broker

    try:
        _, segment = parse_broker(broker)
    except WireError as exc:
        raise InputError(f"--broker: {exc}") from None
    if segment:
        raise InputError(f"--broker: {broker!r}: expected mqtt://HOST[:PORT] without a path")
    mqtt = config.mqtt or MqttConfig(broker=broker, username=config.device_id)
    return dataclasses.replace(config, mqtt=dataclasses.replace(mqtt, broker=broker))


def _check(args: argparse.Namespace) -> int:
    from fleetgate.agent.server import dump_config
    from fleetgate.agent.trust import TrustStore

    config = _load_checked(args)
    # `run` loads the root (or key) lazily; `check` proves it now: parsed, self-signed.
    try:
        TrustStore(config.data_dir, config.root, config.public_key).current()
    except IntegrityError as exc:  # the file the config names: the operator's to fix
        raise InputError(f"{config.source}: agent.root: {exc}") from exc
    print(dump_config(config))
    return 0


async def _enroll(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from fleetgate.agent.enroll import EnrolOptions, enroll

    answer = await enroll(
        EnrolOptions(
            server=args.server,
            token=args.token,
            config=Path(args.config),
            device_id=args.device_id,
            address=args.address,
            hardware=args.hardware,
            group=args.group,
            ca_file=Path(args.ca_file) if args.ca_file else None,
        )
    )
    state = answer.get("state")
    print(f"enrolled {answer.get('id')} in group {answer.get('group')}: {state}")
    if state == "pending":
        print(
            f"an operator admits it with: fleetgate registry accept {answer.get('id')}",
            file=sys.stderr,
        )
    print(
        f"{args.config}: written; (re)start the agent: fleetgate agent run --config {args.config}",
        file=sys.stderr,
    )
    return 0


async def _send_facts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleetgate.agent.enroll import send_facts

    answer = await send_facts(
        args.server, Path(args.config), Path(args.ca_file) if args.ca_file else None
    )
    print(f"facts of {answer.get('id')} sent")
    return 0


def _reset_state(args: argparse.Namespace) -> int:
    from fleetgate.agent.config import load_config
    from fleetgate.agent.state import reset_state
    from fleetgate.errors import InputError

    if args.last_seq < 0:
        raise InputError("--last-seq: expected an integer >= 0")
    config = load_config(args.config)
    path = config.data_dir / "state.json"
    for old in (path, path.with_name(path.name + ".prev")):
        if old.exists():  # keep the evidence next to the new file
            old.replace(old.with_name(old.name + ".lost"))
    reset_state(path, args.last_seq)
    print(f"{path}: last_seq = {args.last_seq}; start the agent again")
    return 0
