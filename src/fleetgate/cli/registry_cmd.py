"""``fleetgate registry import FILE`` and ``fleetgate registry list``.

``import`` validates the whole file first (all problems reported, exit 2) and only then replaces
the store's inventory in one transaction, so a bad file never leaves a half-imported fleet. The
import is an audit event (who imported what, how many devices, the file's sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from fleetgate.cli.main import EXIT_OK, person


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
    reg.set_defaults(handler=lambda a: (reg.print_help(sys.stderr), 2)[1])


async def cmd_import(args: argparse.Namespace) -> int:
    from fleetgate.clock import utc_now_iso
    from fleetgate.core.events import Event
    from fleetgate.registry import load_inventory
    from fleetgate.store import Store

    actor = person(args.actor)
    devices = load_inventory(args.file)  # raises ValidationError listing every problem
    digest = hashlib.sha256(args.file.read_bytes()).hexdigest()
    async with Store.open(args.db) as store, store.transaction():
        await store.replace_devices(devices)
        await store.append(
            Event(
                ts=utc_now_iso(),
                deployment_id=None,
                action="registry.imported",
                actor=actor,
                details={"file": str(args.file), "sha256": digest, "devices": len(devices)},
            )
        )
    print(f"imported {len(devices)} devices from {args.file}")
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
            d.hardware,
            d.arch.value,
            d.group,
            d.state.value,
            d.monitoring.value,
            "yes" if d.critical else "",
            d.address,
        )
    Console().print(table)
    return EXIT_OK
