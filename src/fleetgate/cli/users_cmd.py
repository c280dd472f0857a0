"""``fleetgate users``: who may call the service's API, and with which role.

``users add NAME --role ROLE`` prints the new token once, alone on stdout (so a script can
capture it); the store keeps only its hash. ``users rotate NAME`` gives a new token and
invalidates the old; ``users revoke NAME`` ends access (the name stays reserved so the audit
log keeps meaning one person per name).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fleetgate.cli.main import EXIT_INPUT, EXIT_OK, person

ROLES = ("viewer", "operator", "approver", "admin")


def register(sub: Any) -> None:
    p = sub.add_parser("users", help="API users and their tokens")
    us = p.add_subparsers(dest="action", metavar="ACTION")
    add = us.add_parser("add", help="add a user; prints the token once on stdout")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--as", dest="actor", default=None, help="who is adding (audit log)")
    add.set_defaults(handler=cmd_add)
    rot = us.add_parser("rotate", help="replace a user's token; prints the new one")
    rot.add_argument("name")
    rot.add_argument("--as", dest="actor", default=None)
    rot.set_defaults(handler=cmd_rotate)
    rev = us.add_parser("revoke", help="end a user's access")
    rev.add_argument("name")
    rev.add_argument("--as", dest="actor", default=None)
    rev.set_defaults(handler=cmd_revoke)
    ls = us.add_parser("list", help="users, roles, status (never tokens)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_list)
    p.set_defaults(handler=lambda a: (p.print_help(sys.stderr), EXIT_INPUT)[1])


def _actor(args: argparse.Namespace) -> str:
    import os

    if args.actor is not None:
        return person(args.actor)
    return (os.environ.get("USER") or "").strip() or "admin"


def _name(raw: str) -> str:
    from fleetgate.errors import InputError

    name = raw.strip()
    if not name or len(name) > 128 or any(c.isspace() or not c.isprintable() for c in name):
        raise InputError(f"NAME: {raw!r}: expected a name without spaces, 1-128 characters")
    return name


async def _audit(store: Any, action: str, actor: str, **details: Any) -> None:
    from fleetgate.clock import utc_now_iso
    from fleetgate.core.events import Event

    await store.append(
        Event(ts=utc_now_iso(), deployment_id=None, action=action, actor=actor, details=details)
    )


async def cmd_add(args: argparse.Namespace) -> int:
    from fleetgate.api.tokens import hash_token, new_token
    from fleetgate.store import Store

    name, actor = _name(args.name), _actor(args)
    token = new_token()
    async with Store.open(args.db) as store, store.transaction():
        await store.add_user(name, args.role, hash_token(token))
        await _audit(store, "user.added", actor, name=name, role=args.role)
    print(token)
    print(f"added {name} ({args.role}); the token is shown once", file=sys.stderr)
    return EXIT_OK


async def cmd_rotate(args: argparse.Namespace) -> int:
    from fleetgate.api.tokens import hash_token, new_token
    from fleetgate.errors import InputError
    from fleetgate.store import Store

    name, actor = _name(args.name), _actor(args)
    token = new_token()
    async with Store.open(args.db) as store, store.transaction():
        if not await store.set_user_token(name, hash_token(token)):
            raise InputError(f"NAME: no active user {name!r}")
        await _audit(store, "user.token_rotated", actor, name=name)
    print(token)
    print(f"new token for {name}; the old one no longer works", file=sys.stderr)
    return EXIT_OK


async def cmd_revoke(args: argparse.Namespace) -> int:
    from fleetgate.errors import InputError
    from fleetgate.store import Store

    name, actor = _name(args.name), _actor(args)
    async with Store.open(args.db) as store, store.transaction():
        if not await store.revoke_user(name):
            raise InputError(f"NAME: no active user {name!r}")
        await _audit(store, "user.revoked", actor, name=name)
    print(f"revoked {name}", file=sys.stderr)
    return EXIT_OK


async def cmd_list(args: argparse.Namespace) -> int:
    from fleetgate.store import Store

    async with Store.open(args.db) as store:
        users = await store.list_users()
    rows = [
        {"name": u.name, "role": u.role, "created_at": u.created_at, "revoked_at": u.revoked_at}
        for u in users
    ]
    if args.json:
        json.dump({"users": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in rows:
            status = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
            print(f"{r['name']:<24} {r['role']:<9} {status}")
    return EXIT_OK
