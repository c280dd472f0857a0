"""``fleetgate broker mosquitto-config --out DIR --device ID …``: per-device broker credentials.

Writes ``DIR/mosquitto.conf``, ``DIR/passwd``, ``DIR/acl`` and ``DIR/credentials/<user>.password``
(transports/mosquitto_auth.py): the controller's user (``--controller-user``, default
``fleetgate-controller``) may use every ``fleetgate/v1/#`` topic, each device only its own.
Device ids come from ``--device`` (repeatable) and ``--devices-file`` (one id a line, ``#``
comments). Prints the files written and how to use them; never prints a password.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleetgate.errors import InputError


def register(sub: Any) -> None:
    broker = sub.add_parser("broker", help="MQTT broker configuration for the device channel")
    bsub = broker.add_subparsers(dest="broker_cmd", metavar="COMMAND", parser_class=type(broker))
    mc = bsub.add_parser(
        "mosquitto-config", help="write a Mosquitto password file, ACL and config snippet"
    )
    mc.add_argument("--out", required=True, type=Path, metavar="DIR")
    mc.add_argument("--device", action="append", default=[], metavar="ID")
    mc.add_argument("--devices-file", type=Path, metavar="FILE")
    mc.add_argument("--controller-user", default="fleetgate-controller", metavar="USER")
    mc.add_argument(
        "--listener", default="1883 127.0.0.1", metavar="'PORT [HOST]'", help="listener line"
    )
    mc.set_defaults(handler=cmd_mosquitto_config)


def _ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.device)
    if args.devices_file is not None:
        try:
            text = args.devices_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{args.devices_file}: cannot read: {exc.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            item = line.split("#", 1)[0].strip()
            if item:
                if " " in item:
                    raise InputError(f"{args.devices_file}:{n}: one device id a line")
                ids.append(item)
    if not ids:
        raise InputError("--device or --devices-file: no device ids given")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(f"device ids given twice: {', '.join(dupes)}")
    return ids


def cmd_mosquitto_config(args: argparse.Namespace) -> int:
    from fleetgate.transports.mosquitto_auth import write_mosquitto_config

    ids = _ids(args)
    written = write_mosquitto_config(
        args.out, args.controller_user, dict.fromkeys(ids), listener=args.listener
    )
    print(f"{written.conf}: mosquitto -c {written.conf}")
    print(f"{written.passwd}: {len(ids) + 1} users (PBKDF2-SHA512)")
    print(f"{written.acl}: {args.controller_user} on fleetgate/v1/#, each device on its own topics")
    print(
        f"{written.credentials}/: one <user>.password each; controller: "
        f"FLEETGATE_MQTT_USERNAME={args.controller_user} "
        f"FLEETGATE_MQTT_PASSWORD_FILE={written.credentials}/{args.controller_user}.password; "
        f"device: [mqtt] password_file"
    )
    return 0
