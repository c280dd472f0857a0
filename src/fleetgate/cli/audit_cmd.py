"""``fleetgate audit show [ID] [--json]`` and ``fleetgate audit verify [--json]``.

``show`` prints the audit log — every event, or one deployment's — as a timeline table (seq,
time, deployment, device, actor, action, outcome, key details), or with ``--json`` one JSON
document ``{"deployment_id", "count", "events": [...]}`` holding each event in full, hashes
included. An ID the store has never heard of is an input error (exit 2). A row that no longer
decodes (its details edited into something that is not JSON) cannot be shown: one line naming
its seq on stderr, exit 3, as ``verify`` would.

``verify`` walks the whole hash chain and the chain head: exit 0 with ``audit chain OK: N
events``, or exit 3 (halted: the log cannot be trusted) with ``audit chain BROKEN at seq N:
reason`` naming the first event that does not fit (an edited row whose details are no longer
JSON included). Both print the result on stdout (it is the command's answer, not a failure of
the command); ``--json`` prints ``{"ok", "checked", "first_bad_seq", "reason"}`` instead.

Both read the store named by the global ``--db``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fleetgate.cli.main import EXIT_HALTED, EXIT_OK
from fleetgate.clock import parse_iso
from fleetgate.core.events import StoredEvent, event_to_dict
from fleetgate.errors import InputError

DETAIL_CHARS = 72


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="show and verify the audit log")
    asub = audit.add_subparsers(dest="audit_cmd", metavar="COMMAND", parser_class=type(audit))
    show = asub.add_parser("show", help="the audit timeline, all or one deployment's")
    show.add_argument("id", nargs="?", help="deployment id (default: every event)")
    show.add_argument("--json", action="store_true", help="one JSON document on stdout")
    show.set_defaults(handler=cmd_show)
    verify = asub.add_parser("verify", help="check the audit log's hash chain")
    verify.add_argument("--json", action="store_true", help="one JSON document on stdout")
    verify.set_defaults(handler=cmd_verify)
    audit.set_defaults(handler=lambda _a: (audit.print_help(sys.stderr), 2)[1])


def _short_time(ts: str) -> str:
    try:
        return parse_iso(ts).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return ts


def _key_details(details: Any) -> str:
    parts = []
    for key, value in dict(details).items():
        shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={shown}")
    text = " ".join(parts)
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"


def _print_table(events: list[StoredEvent], title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    if not events:
        console.print(Text(f"{title}: no events"))
        return
    # Cells are Text, not markup strings: event content may contain "[...]".
    table = Table(title=Text(title), title_justify="left")
    for name, justify in [
        ("seq", "right"),
        ("time (UTC)", "left"),
        ("deployment", "left"),
        ("device", "left"),
        ("actor", "left"),
        ("action", "left"),
        ("outcome", "left"),
        ("details", "left"),
    ]:
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for ev in events:
        table.add_row(
            Text(str(ev.seq)),
            Text(_short_time(ev.ts)),
            Text(ev.deployment_id or "-"),
            Text(ev.device_id or "-"),
            Text(ev.actor),
            Text(ev.action),
            Text(ev.outcome, style="" if ev.outcome == "ok" else "bold"),
            Text(_key_details(ev.details)),
        )
    console.print(table)


async def cmd_show(args: argparse.Namespace) -> int:
    from fleetgate.store import Store
    from fleetgate.store.audit_log import CorruptEventError

    async with Store.open(args.db) as store:
        try:
            events = await store.events(args.id)
        except CorruptEventError as exc:
            print(f"fleetgate: error: {exc}", file=sys.stderr)
            return EXIT_HALTED
        if args.id and not events and await store.get_deployment(args.id) is None:
            raise InputError(f"no deployment {args.id!r} in the store ({store.target.display})")
    if args.json:
        doc = {
            "deployment_id": args.id,
            "count": len(events),
            "events": [event_to_dict(ev) for ev in events],
        }
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_table(events, f"audit log: deployment {args.id}" if args.id else "audit log")
    return EXIT_OK


async def cmd_verify(args: argparse.Namespace) -> int:
    from fleetgate.store import Store

    async with Store.open(args.db) as store:
        report = await store.verify()
    if args.json:
        doc = {
            "ok": report.ok,
            "checked": report.checked,
            "first_bad_seq": report.first_bad_seq,
            "reason": report.reason,
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif report.ok:
        print(f"audit chain OK: {report.checked} events")
    elif report.first_bad_seq is not None:
        print(f"audit chain BROKEN at seq {report.first_bad_seq}: {report.reason}")
    else:
        print(f"audit chain BROKEN: {report.reason}")
    return EXIT_OK if report.ok else EXIT_HALTED
