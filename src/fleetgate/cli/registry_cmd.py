"""``fleetgate registry import FILE``, ``list [--state S]``, ``release ID``, ``accept
ID…|--all-pending`` and ``refresh [--select EXPR]``.

``accept`` admits self-enrolled devices (pending -> active). ``refresh`` asks the devices for
their facts through the transport (the credentials and TLS a deployment uses) and fills the
inventory and ``last_seen``; a device that does not answer keeps what was known. ``list``,
``accept`` and ``refresh`` also work against a running service (``--server``/
``FLEETGATE_SERVER`` with ``FLEETGATE_TOKEN``; accept and refresh need the operator role).

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

from fleetgate.cli.deploy_run import server_arg
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
    lst.add_argument("--state", choices=[s.value for s in DeviceState], help="only this state")
    lst.add_argument("--json", action="store_true", help="one JSON document on stdout")
    server_arg(lst)
    lst.set_defaults(handler=cmd_list)
    acc = rsub.add_parser("accept", help="admit self-enrolled devices (pending -> active)")
    acc.add_argument("ids", nargs="*", metavar="ID", help="device ids")
    acc.add_argument("--all-pending", action="store_true", help="every pending device")
    acc.add_argument("--as", dest="actor", default=None, help="who accepts (audit log)")
    server_arg(acc)
    acc.set_defaults(handler=cmd_accept)
    ref = rsub.add_parser("refresh", help="read facts from the devices into the inventory")
    ref.add_argument("--select", help="only these devices (selector)")
    ref.add_argument("--as", dest="actor", default=None, help="who refreshes (audit log)")
    ref.add_argument("--json", action="store_true", help="one JSON document on stdout")
    server_arg(ref)
    ref.set_defaults(handler=cmd_refresh)
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


def _actor(args: argparse.Namespace) -> str:
    return person(args.actor if args.actor is not None else os.environ.get("USER") or "operator")


async def cmd_list(args: argparse.Namespace) -> int:
    from fleetgate.registry import device_to_dict, select_devices

    if args.server:
        from urllib.parse import urlencode

        from fleetgate.cli.remote import remote

        query = {k: v for k, v in (("select", args.select), ("state", args.state)) if v}
        r = remote(args)
        try:
            rows = (await r.call("GET", "/api/v1/registry?" + urlencode(query)))["devices"]
        finally:
            await r.close()
        total = len(rows)
    else:
        from fleetgate.store import Store

        async with Store.open(args.db) as store:
            devices = await store.list_devices()
            seen = await store.last_seen()
        chosen = select_devices(devices, args.select)
        if args.state:
            chosen = [d for d in chosen if d.state.value == args.state]
        rows = [
            {**device_to_dict(d), "facts_known": d.facts_known, "last_seen": seen.get(d.id)}
            for d in chosen
        ]
        total = len(devices)
    if args.json:
        json.dump({"devices": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} of {total} devices")
    cols = ("id", "hardware", "arch", "group", "state", "monitoring", "critical", "address")
    for col in (*cols, "last_seen"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["id"],
            row.get("hardware", "?"),  # ? = not reported yet: fleetgate registry refresh
            row.get("arch", "?"),
            row["group"],
            row["state"],
            row["monitoring"],
            "yes" if row["critical"] else "",
            row["address"],
            (row.get("last_seen") or "never")[:19],
        )
    Console().print(table)
    return EXIT_OK


async def cmd_accept(args: argparse.Namespace) -> int:
    from fleetgate.errors import InputError

    if bool(args.ids) == args.all_pending:
        raise InputError("registry accept: give device ids or --all-pending (one of them)")
    if args.server:
        from fleetgate.cli.remote import remote

        r = remote(args)
        try:
            doc = await r.call(
                "POST",
                "/api/v1/registry:accept",
                json={"ids": args.ids, "all_pending": args.all_pending},
            )
        finally:
            await r.close()
        done = list(doc["accepted"])
    else:
        from fleetgate.clock import to_iso
        from fleetgate.engine.enrolment import accept
        from fleetgate.store import Store

        async with Store.open(args.db) as store:
            done = await accept(
                store,
                args.ids,
                all_pending=args.all_pending,
                actor=_actor(args),
                now=to_iso(await store.now()),
            )
    print(f"accepted {len(done)} device(s)" + (": " + ", ".join(done[:20]) if done else ""))
    return EXIT_OK


async def cmd_refresh(args: argparse.Namespace) -> int:
    if args.server:
        from fleetgate.cli.remote import remote

        r = remote(args)
        try:
            doc = await r.call("POST", "/api/v1/registry:refresh", json={"select": args.select})
        finally:
            await r.close()
    else:
        from fleetgate.clock import to_iso
        from fleetgate.engine.facts_refresh import refresh_facts
        from fleetgate.registry import select_devices
        from fleetgate.store import Store
        from fleetgate.transports.http import HttpTransport, controller_tls_from_env
        from fleetgate.transports.tokens import TokenSource

        async with (
            Store.open(args.db) as store,
            HttpTransport(TokenSource(), tls=controller_tls_from_env()) as client,
        ):
            chosen = select_devices(await store.list_devices(), args.select)
            done = await refresh_facts(
                store, client, chosen, now=to_iso(await store.now()), actor=_actor(args)
            )
        doc = {
            "asked": len(chosen),
            "updated": [d.id for d in done.updated],
            "failed": done.failed,
        }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"refreshed {len(doc['updated'])} of {doc['asked']} device(s)")
        for ident, why in sorted(doc["failed"].items()):
            print(f"{ident}: not refreshed: {why}", file=sys.stderr)
    return EXIT_OK if not doc["failed"] else 1
