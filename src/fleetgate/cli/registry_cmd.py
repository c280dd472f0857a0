"""``fleetgate registry import FILE`` and ``fleetgate registry list``.

``import`` validates the whole file first (all problems reported, exit 2) and only then replaces
the store's inventory in one transaction, so a bad file never leaves a half-imported fleet. The
import is an audit event (who imported what, how many devices, the file's sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from fleetgate.cli.main import EXIT_OK, person
from fleetgate.core.model import DeviceState


def register(sub: Any) -> None:
    reg = sub.add_parser("registry", help="device inventory")
    rsub = reg.add_subparsers(dest="registry_cmd", metavar="COMMAND", parser_class=type(reg))
    imp = rsub.add_parser("import", help="validate an inventory and make it the fleet")
    imp.add_argument("file", type=Path, help="fleet.yaml, fleet.csv or an Ansible inventory")
    imp.add_argument("--as", dest="actor", default="operator", help="who imports (audit log)")
    imp.set_defaults(handler=cmd_import)
    lst = rsub.add_parser("list", help="list devices")
    lst.add_argument("--select", help="selector, e.g. 'hardware=rpi4,!state=maintenance'")
    lst.add_argument("--json", action="store_true", help="one JSON document on stdout")
    lst.set_defaults(handler=cmd_list)
    rel = rsub.add_parser("release", help="return a quarantined device to service")
    rel.add_argument("id", help="device id")
    rel.add_argument("--as", dest="actor", default=None, help="who releases it (audit log)")
    rel.add_argument("--comment", default="", help="what was found and done")
    rel.set_defaults(handler=cmd_release)
    reg.set_defaults(handler=lambda a: (reg.print_help(sys.stderr), 2)[1])


async def cmd_import(args: argparse.Namespace) -> int:
    from fleetgate.engine.inventory import import_inventory
    from fleetgate.registry import load_inventory
    from fleetgate.store import Store

    actor = person(args.actor)
    devices = load_inventory(args.file)  # raises ValidationError listing every problem
    digest = hashlib.sha256(args.file.read_bytes()).hexdigest()
    async with Store.open(args.db) as store:
        done = await import_inventory(
            store, devices, actor=actor, source=str(args.file), sha256=digest
        )
    kept = done.kept_in_quarantine
    print(f"imported {len(devices)} devices from {args.file}")
    if kept:
        print(
            f"kept {len(kept)} devices in quarantine (set aside by a deployment): "
            + ", ".join(kept[:10])
            + (" …" if len(kept) > 10 else "")
            + "; fleetgate registry release ID returns one to service",
            file=sys.stderr,
        )
    return EXIT_OK


async def cmd_release(args: argparse.Namespace) -> int:
    from fleetgate.clock import utc_now_iso
    from fleetgate.core.events import Event
    from fleetgate.errors import InputError
    from fleetgate.store import Store

    actor = person(args.actor if args.actor is not None else os.environ.get("USER"))
    async with Store.open(args.db) as store, store.transaction():
        dev = await store.get_device(args.id)
        if dev is None:
            raise InputError(f"registry release: no device {args.id!r} in the inventory")
        listed = await store.clear_quarantine(dev.id)
        if dev.state is not DeviceState.QUARANTINE and not listed:
            raise InputError(f"registry release: {args.id} is {dev.state.value}, not in quarantine")
        await store.upsert_devices([replace(dev, state=DeviceState.ACTIVE, state_reason="")])
        await store.append(
            Event(
                ts=utc_now_iso(),
                deployment_id=None,
                device_id=dev.id,
                action="registry.released",
                actor=actor,
                details={"was": dev.state_reason, "comment": args.comment},
            )
        )
    print(f"{args.id}: back in service (was: {dev.state_reason or 'quarantine'})")
    return EXIT_OK


async def cmd_list(args: argparse.Namespace) -> int:
    from fleetgate.registry import device_to_dict, select_devices
    from fleetgate.store import Store

    async with Store.open(args.db) as store:
        devices = await store.list_devices()
    chosen = select_devices(devices, args.select)
    if args.json:
        json.dump({"devices": [device_to_dict(d) for d in chosen]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(chosen)} of {len(devices)} devices")
    for col in ("id", "hardware", "arch", "group", "state", "monitoring", "critical", "address"):
        table.add_column(col)
    for d in chosen:
        table.add_row(
            d.id,
            d.hardware or "?",
            d.arch.value if d.arch else "?",
            d.group,
            d.state.value,
            d.monitoring.value,
            "yes" if d.critical else "",
            d.address,
        )
    Console().print(table)
    return EXIT_OK
