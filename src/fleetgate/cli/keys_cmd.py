"""``fleetgate keys generate|init-root|rotate|revoke``: signing keys and the root metadata chain.

- ``generate --out DIR`` writes ``DIR/fleetgate-signing.key`` (PEM PKCS#8, mode 0600) and
  ``DIR/fleetgate-signing.pub`` (PEM) and prints both paths (``--json``: ``{"private_key",
  "public_key"}``). Never overwrites an existing key (exit 2 naming the file, nothing written).
- ``init-root --roots DIR --root-key KEY [--root-key KEY …] [--release-key PUB …]`` writes
  ``DIR/1.root.json`` (and ``DIR/root.json``, a copy of the newest): the root keys sign roots,
  the release keys (default: the root keys' public halves) sign releases. Signed by every
  ``--root-key``. A device configured with a bare ``public_key`` trusts the first root signed by
  that key: pass the old key as ``--root-key`` to move such a fleet to roots.
- ``rotate --roots DIR --sign KEY … [--add-release-key PUB] [--remove-release-key KEY]
  [--add-root-key PUB] [--remove-root-key KEY] [--threshold N] [--root-threshold N]`` writes
  ``N+1.root.json`` from the newest ``N``: the ``--sign`` keys must meet root N's root threshold
  *and* the new root's (checked before anything is written, exit 2 otherwise).
- ``revoke --roots DIR --sign KEY … KEY`` is a rotation that removes ``KEY`` (a public key file
  or a key id, 12+ hex digits) from every role.
Every root expires ``--expires-days`` (default 365) from now. Publish the directory with the
controller (``deploy start`` with ``--pubkey DIR/root.json``): devices fetch the chain at each
stage (docs/artifacts.md, "Roots and key rotation").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fleetgate.artifacts.keys import generate_keypair
from fleetgate.errors import InputError


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage the release signing keys and root metadata")
    ksub = keys.add_subparsers(dest="keys_cmd", metavar="COMMAND", parser_class=type(keys))
    gen = ksub.add_parser("generate", help="create an Ed25519 signing key pair")
    gen.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for keys")
    gen.add_argument("--json", action="store_true", help="one JSON document on stdout")
    gen.set_defaults(handler=cmd_generate)

    init = ksub.add_parser("init-root", help="write the first root.json (version 1)")
    init.add_argument("--root-key", action="append", required=True, type=Path, metavar="KEY")
    init.add_argument("--release-key", action="append", default=[], type=Path, metavar="PUB")
    _common(init)
    init.set_defaults(handler=cmd_init_root)

    rot = ksub.add_parser("rotate", help="write the next root with keys added or removed")
    rot.add_argument("--sign", action="append", required=True, type=Path, metavar="KEY")
    rot.add_argument("--add-release-key", action="append", default=[], type=Path, metavar="PUB")
    rot.add_argument("--remove-release-key", action="append", default=[], metavar="KEY")
    rot.add_argument("--add-root-key", action="append", default=[], type=Path, metavar="PUB")
    rot.add_argument("--remove-root-key", action="append", default=[], metavar="KEY")
    _common(rot)
    rot.set_defaults(handler=cmd_rotate)

    rev = ksub.add_parser("revoke", help="write the next root without a key")
    rev.add_argument("key", metavar="KEY", help="public key file or key id (12+ hex digits)")
    rev.add_argument("--sign", action="append", required=True, type=Path, metavar="KEY")
    _common(rev)
    rev.set_defaults(handler=cmd_revoke)
    keys.set_defaults(handler=lambda _a: (keys.print_help(sys.stderr), 2)[1])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--roots", required=True, type=Path, metavar="DIR", help="N.root.json files")
    p.add_argument("--threshold", type=int, help="release signatures a manifest needs")
    p.add_argument("--root-threshold", type=int, help="root signatures a new root needs")
    p.add_argument("--expires-days", type=int, default=365, help="validity (default 365)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def cmd_generate(args: argparse.Namespace) -> int:
    key_path, pub_path = generate_keypair(args.out)
    if args.json:
        print(json.dumps({"private_key": str(key_path), "public_key": str(pub_path)}))
    else:
        print(f"private key: {key_path}  (keep secret; mode 0600)")
        print(f"public key:  {pub_path}  (install on every device)")
    return 0


def _expires(days: int) -> str:
    if days < 1:
        raise InputError(f"--expires-days {days}: expected at least 1")
    when = datetime.now(timezone.utc) + timedelta(days=days)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _newest(folder: Path) -> tuple[Any, Path]:
    from fleetgate.artifacts.root import load_root_file

    found = sorted(
        (int(p.name.split(".")[0]), p)
        for p in folder.glob("*.root.json")
        if p.name.split(".")[0].isdigit()
    )
    if not found:
        raise InputError(f"{folder}: no N.root.json (run `fleetgate keys init-root` first)")
    return load_root_file(found[-1][1]), found[-1][1]


def _write(folder: Path, version: int, doc: bytes, args: argparse.Namespace) -> int:
    path = folder / f"{version}.root.json"
    if path.exists():
        raise InputError(f"{path}: already exists; refusing to overwrite a root")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.tmp"
    tmp.write_bytes(doc)
    tmp.replace(path)
    shutil.copyfile(path, folder / "root.json")
    if args.json:
        print(json.dumps({"path": str(path), "version": version}))
    else:
        print(f"root v{version}: {path} (and {folder / 'root.json'})")
    return 0


def cmd_init_root(args: argparse.Namespace) -> int:
    from fleetgate.artifacts.keys import load_private_key, load_public_key
    from fleetgate.artifacts.root import make_root, sign_root

    if (args.roots / "1.root.json").exists():
        raise InputError(f"{args.roots / '1.root.json'}: already exists")
    signers = [load_private_key(p) for p in args.root_key]
    root_pubs = [k.public_key() for k in signers]
    release = [load_public_key(p) for p in args.release_key] or root_pubs
    try:
        signed = make_root(
            1,
            _expires(args.expires_days),
            root_pubs,
            args.root_threshold or 1,
            release,
            args.threshold or 1,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return _write(args.roots, 1, sign_root(signed, signers), args)


def _match(root: Any, ref: str) -> str:
    """A key id of ``root`` named by a public key file or a key id prefix."""
    from fleetgate.artifacts.keys import load_public_key
    from fleetgate.artifacts.root import key_id

    if Path(ref).is_file():
        kid = key_id(load_public_key(ref))
        if kid not in root.keys:
            raise InputError(f"{ref}: not a key of root v{root.version}")
        return kid
    hits = [k for k in root.keys if len(ref) >= 12 and k.startswith(ref.lower())]
    if len(hits) != 1:
        raise InputError(f"{ref}: names no key (or several) of root v{root.version}")
    return str(hits[0])


def _next_root(
    args: argparse.Namespace, change: Callable[[Any, dict[str, Any], dict[str, Any]], None]
) -> int:
    """Root N → N+1: ``change(root, root_keys, release_keys)`` edits the two {keyid: pub} maps."""
    from fleetgate.artifacts.keys import load_private_key
    from fleetgate.artifacts.root import (
        RELEASE_ROLE,
        ROOT_ROLE,
        make_root,
        parse_root,
        sign_root,
        verify_next,
    )
    from fleetgate.errors import IntegrityError

    old, _path = _newest(args.roots)
    root_keys = {k: old.keys[k] for k in old.roles[ROOT_ROLE].keyids}
    release_keys = {k: old.keys[k] for k in old.roles[RELEASE_ROLE].keyids}
    change(old, root_keys, release_keys)
    threshold = args.threshold or min(old.roles[RELEASE_ROLE].threshold, len(release_keys))
    root_threshold = args.root_threshold or min(old.roles[ROOT_ROLE].threshold, len(root_keys))
    version = old.version + 1
    try:
        signed = make_root(
            version,
            _expires(args.expires_days),
            root_keys.values(),
            root_threshold,
            release_keys.values(),
            threshold,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    doc = sign_root(signed, [load_private_key(p) for p in args.sign])
    try:  # what every device will check: refuse to write a root that does not chain
        verify_next(old, parse_root(doc, f"{version}.root.json"))
    except IntegrityError as exc:
        raise InputError(f"{exc} (sign with the old root keys and the new ones)") from exc
    return _write(args.roots, version, doc, args)


def cmd_rotate(args: argparse.Namespace) -> int:
    from fleetgate.artifacts.keys import load_public_key
    from fleetgate.artifacts.root import key_id

    def change(old: Any, root_keys: dict[str, Any], release_keys: dict[str, Any]) -> None:
        for ref in args.remove_release_key:
            release_keys.pop(_match(old, ref), None)
        for ref in args.remove_root_key:
            root_keys.pop(_match(old, ref), None)
        for p in args.add_release_key:
            pub = load_public_key(p)
            release_keys[key_id(pub)] = pub
        for p in args.add_root_key:
            pub = load_public_key(p)
            root_keys[key_id(pub)] = pub

    return _next_root(args, change)


def cmd_revoke(args: argparse.Namespace) -> int:
    def change(old: Any, root_keys: dict[str, Any], release_keys: dict[str, Any]) -> None:
        kid = _match(old, args.key)
        root_keys.pop(kid, None)
        release_keys.pop(kid, None)

    return _next_root(args, change)
