"""``fleetgate enroll``: one-time enrolment tokens for devices that introduce themselves.

``enroll create --group G --expires 24h [--auto-accept]`` prints the token once, alone on
stdout (so a script can capture it, as ``users add`` does); the store keeps only its SHA-256.
``enroll list`` shows tokens (never the token itself) with their status; ``enroll revoke ID``
ends an unused one. Locally they work on the store (``--db``); with ``--server`` (or
``FLEETGATE_SERVER``) against a running service with ``FLEETGATE_TOKEN``: creating needs the
operator role, and an ``--auto-accept`` token the admin role (it admits devices unreviewed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fleetgate.cli.deploy_run import server_arg
from fleetgate.cli.main import EXIT_INPUT, EXIT_OK, person


def register(sub: Any) -> None:
    p = sub.add_parser("enroll", help="one-time enrolment tokens for self-enrolling devices")
    es = p.add_subparsers(dest="action", metavar="ACTION")
    create = es.add_parser("create", help="make a token; prints it once on stdout")
    create.add_argument("--group", required=True, help="the group enrolled devices join")
    create.add_argument("--expires", default="24h", help="lifetime, e.g. 30m, 24h (max 30 days)")
    create.add_argument(
        "--auto-accept",
        action="store_true",
        help="devices become active at once instead of pending (admin role with --server)",
    )
    create.add_argument("--as", dest="actor", default=None, help="who creates it (audit log)")
    server_arg(create)
    create.set_defaults(handler=cmd_create)
    ls = es.add_parser("list", help="tokens and their status (never the tokens)")
    ls.add_argument("--json", action="store_true")
    server_arg(ls)
    ls.set_defaults(handler=cmd_list)
    rev = es.add_parser("revoke", help="end an unused token")
    rev.add_argument("id", help="the token's id (enr-…), from enroll list")
    rev.add_argument("--as", dest="actor", default=None)
    server_arg(rev)
    rev.set_defaults(handler=cmd_revoke)
    p.set_defaults(handler=lambda a: (p.print_help(sys.stderr), EXIT_INPUT)[1])


def _actor(args: argparse.Namespace) -> str:
    if args.actor is not None:
        return person(args.actor)
    return (os.environ.get("USER") or "").strip() or "operator"


def _ttl(text: str) -> float:
    from fleetgate.config.policy_file import parse_duration
    from fleetgate.errors import InputError

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InputError(f"--expires: {exc}") from None


async def cmd_create(args: argparse.Namespace) -> int:
    if args.server:
        from fleetgate.cli.remote import remote

        r = remote(args)
        try:
            doc = await r.call(
                "POST",
                "/api/v1/enroll/tokens",
                json={
                    "group": args.group,
                    "expires": args.expires,
                    "auto_accept": args.auto_accept,
                },
            )
        finally:
            await r.close()
        token, rec = doc["token"], doc
    else:
        from fleetgate.clock import to_iso
        from fleetgate.engine.enrolment import create_token
        from fleetgate.store import Store

        ttl = _ttl(args.expires)
        async with Store.open(args.db) as store:
            token, record = await create_token(
                store,
                group=args.group,
                ttl_s=ttl,
                auto_accept=args.auto_accept,
                actor=_actor(args),
                now=to_iso(await store.now()),
            )
        rec = record.to_dict()
    print(token)
    mode = "active at once" if rec["auto_accept"] else "pending until accepted"
    print(
        f"enrolment token {rec['id']} for group {rec['group']} ({mode}), single use, expires "
        f"{rec['expires_at']}; shown once",
        file=sys.stderr,
    )
    return EXIT_OK


async def cmd_list(args: argparse.Namespace) -> int:
    if args.server:
        from fleetgate.cli.remote import remote

        r = remote(args)
        try:
            rows = (await r.call("GET", "/api/v1/enroll/tokens"))["tokens"]
        finally:
            await r.close()
    else:
        from fleetgate.clock import to_iso
        from fleetgate.store import Store

        async with Store.open(args.db) as store:
            now = to_iso(await store.now())
            rows = [t.to_dict(now) for t in await store.list_enrol_tokens()]
    if args.json:
        json.dump({"tokens": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    for t in rows:
        used = f" by {t['used_by']}" if t.get("used_by") else ""
        auto = " auto-accept" if t["auto_accept"] else ""
        print(
            f"{t['id']:<13} {t['group']:<16} {t['status'] + used:<24} "
            f"expires {t['expires_at']}{auto}"
        )
    return EXIT_OK


async def cmd_revoke(args: argparse.Namespace) -> int:
    if args.server:
        from fleetgate.cli.remote import remote

        r = remote(args)
        try:
            await r.call("DELETE", f"/api/v1/enroll/tokens/{args.id}")
        finally:
            await r.close()
    else:
        from fleetgate.clock import to_iso
        from fleetgate.engine.enrolment import revoke_token
        from fleetgate.store import Store

        async with Store.open(args.db) as store:
            await revoke_token(store, args.id, actor=_actor(args), now=to_iso(await store.now()))
    print(f"revoked {args.id}", file=sys.stderr)
    return EXIT_OK
