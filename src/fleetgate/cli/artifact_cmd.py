"""``fleetgate artifact build|verify``: make and check signed release bundles.

- ``build SRC_DIR --key KEY [--key KEY …] [--valid-days N | --valid-until DATE] -o OUT_DIR
  [--root ROOT.json] [--json]`` signs with every ``--key`` (a root's release threshold may need
  several; ``--root`` refuses to build when they do not meet it), binds an
  expiry (default 365 days after the build day) and the payload's file list, reads
  ``SRC_DIR/fleetgate.toml``, writes
  ``OUT_DIR/NAME-VERSION.fgb`` and prints ``path: …`` and ``sha256: …`` (of the bundle file);
  ``--json`` prints ``{"path", "sha256", "manifest": {…}}``. The same input always gives the same
  bytes, so the sha256 can be compared between build machines.
- ``verify FILE (--pubkey PUB | --root ROOT.json) [--json]`` checks the container, the
  signature(s) — with a root, a threshold of its release keys — then the payload's length and
  sha256. Success: ``OK name version`` plus the payload and bundle digests (exit 0).
  Failure is an input problem from the operator's point of view — the file they named is not a
  good bundle — so it exits 2 with one line ``fleetgate: error: FILE: reason`` (bad signature,
  digest mismatch, truncated, not a bundle); ``--json`` prints ``{"ok": false, "error"}`` too.
- ``authorize-downgrade --key KEY --name N --version V --devices ID... | '*' --expires 24h -o
  FILE`` signs a downgrade authorisation (artifacts/downgrade_auth.py): the devices named may
  stage version V of N although they committed a higher one, until the expiry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fleetgate.cli.main import EXIT_INPUT, EXIT_OK
from fleetgate.errors import InputError, IntegrityError


def register(sub: Any) -> None:
    art = sub.add_parser("artifact", help="build and verify signed release bundles")
    asub = art.add_subparsers(dest="artifact_cmd", metavar="COMMAND", parser_class=type(art))
    build = asub.add_parser("build", help="build a signed, reproducible bundle from SRC_DIR")
    build.add_argument(
        "src_dir", type=Path, metavar="SRC_DIR", help="directory with fleetgate.toml"
    )
    build.add_argument(
        "--key",
        required=True,
        action="append",
        type=Path,
        help="Ed25519 private key (PEM); repeat to sign with several keys",
    )
    build.add_argument(
        "--root",
        type=Path,
        help="root.json: refuse to build unless the keys meet its release threshold",
    )
    build.add_argument("--valid-days", type=int, default=365, help="expiry (default 365 days)")
    build.add_argument("--valid-until", metavar="YYYY-MM-DDTHH:MM:SSZ", help="expiry (UTC)")
    build.add_argument(
        "-o", "--out", required=True, type=Path, metavar="OUT_DIR", help="output directory"
    )
    build.add_argument("--json", action="store_true", help="one JSON document on stdout")
    build.set_defaults(handler=cmd_build)
    verify = asub.add_parser("verify", help="check a bundle's signature and payload digest")
    verify.add_argument("file", type=Path, metavar="FILE", help="the .fgb bundle")
    trust = verify.add_mutually_exclusive_group(required=True)
    trust.add_argument("--pubkey", type=Path, help="Ed25519 public key (PEM) or a root.json")
    trust.add_argument("--root", type=Path, help="root.json naming the release keys")
    verify.add_argument("--json", action="store_true", help="one JSON document on stdout")
    verify.set_defaults(handler=cmd_verify)
    auth = asub.add_parser(
        "authorize-downgrade",
        help="sign an authorisation for devices to go back to an older version",
    )
    auth.add_argument("--key", required=True, type=Path, help="Ed25519 release key (PEM)")
    auth.add_argument("--name", required=True, help="release name (the manifest's name)")
    auth.add_argument("--version", required=True, help="the exact version authorised")
    auth.add_argument(
        "--devices", required=True, nargs="+", metavar="ID", help="device ids, or '*' for all"
    )
    auth.add_argument("--expires", default="24h", help="validity: 30m, 24h, 7d (max 30d)")
    auth.add_argument("-o", "--out", required=True, type=Path, metavar="FILE")
    auth.set_defaults(handler=cmd_authorize_downgrade)
    art.set_defaults(handler=lambda _a: (art.print_help(sys.stderr), 2)[1])


def cmd_build(args: argparse.Namespace) -> int:
    from fleetgate.artifacts.bundle import build_bundle
    from fleetgate.artifacts.keys import load_private_key
    from fleetgate.core.manifest import manifest_to_dict

    keys = [load_private_key(p) for p in args.key]
    if args.root is not None:
        _check_threshold(args.root, keys)
    if args.valid_days < 1:
        raise InputError(f"--valid-days {args.valid_days}: expected at least 1")
    built = build_bundle(
        args.src_dir, keys, args.out, valid_until=args.valid_until, valid_days=args.valid_days
    )
    if args.json:
        doc: dict[str, Any] = {
            "path": str(built.path),
            "sha256": built.sha256,
            "manifest": manifest_to_dict(built.manifest),
        }
        print(json.dumps(doc, sort_keys=True))
    else:
        print(f"path: {built.path}")
        print(f"sha256: {built.sha256}")
    return EXIT_OK


def _validity(manifest: Any) -> str:
    """The manifest's expiry as a human reads it (devices refuse to stage it once past)."""
    from datetime import datetime, timezone

    from fleetgate.core.manifest import parse_utc

    if manifest.valid_until is None:
        return "no expiry and no file list (built before verified slots: agents refuse it)"
    until = parse_utc(manifest.valid_until)
    expired = until is not None and datetime.now(timezone.utc) >= until
    return f"{manifest.valid_until}{' (EXPIRED: devices refuse to stage it)' if expired else ''}"


def _check_threshold(root_path: Path, keys: list[Any]) -> None:
    """Before building: do ``keys`` meet the root's release threshold? (What devices check.)"""
    from fleetgate.artifacts.root import RELEASE_ROLE, key_id, load_root_file

    root = load_root_file(root_path)
    trusted = set(root.release_keyids)
    given = {key_id(k.public_key()) for k in keys}
    need = root.roles[RELEASE_ROLE].threshold
    if len(given & trusted) < need:
        raise InputError(
            f"{root_path}: root v{root.version} needs {need} of its release keys; "
            f"{len(given & trusted)} of the --key given are among them"
        )


def cmd_verify(args: argparse.Namespace) -> int:
    from fleetgate.artifacts.container import file_sha256
    from fleetgate.artifacts.root import load_trust
    from fleetgate.artifacts.signing import verify_bundle
    from fleetgate.core.manifest import manifest_to_dict

    public_key = load_trust(args.root or args.pubkey)
    try:
        manifest = verify_bundle(args.file, public_key)
    except IntegrityError as exc:
        reason = str(exc)
        prefix = f"{args.file}: "
        line = reason if reason.startswith(prefix) else prefix + reason
        if args.json:
            print(json.dumps({"ok": False, "path": str(args.file), "error": line}))
        print(f"fleetgate: error: {line}", file=sys.stderr)
        return EXIT_INPUT
    bundle_sha = file_sha256(args.file)
    if args.json:
        doc = {
            "ok": True,
            "path": str(args.file),
            "sha256": bundle_sha,
            "manifest": manifest_to_dict(manifest),
        }
        print(json.dumps(doc, sort_keys=True))
    else:
        print(f"OK {manifest.name} {manifest.version} ({manifest.kind.value})")
        print(f"payload sha256: {manifest.sha256} ({manifest.size} bytes, signed)")
        print(f"bundle sha256: {bundle_sha}")
        print(f"valid until: {_validity(manifest)}")
    return EXIT_OK


def cmd_authorize_downgrade(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from fleetgate.artifacts.downgrade_auth import make_authorization, parse_duration
    from fleetgate.artifacts.keys import load_private_key

    key = load_private_key(args.key)
    devices: list[str] | str = "*" if args.devices == ["*"] else list(args.devices)
    until = datetime.now(timezone.utc) + parse_duration(args.expires)
    auth = make_authorization(
        key, name=args.name, version=args.version, devices=devices, valid_until=until
    )
    args.out.write_text(json.dumps(auth, indent=1) + "\n", encoding="utf-8")
    doc = json.loads(auth["document"])
    print(f"path: {args.out}")
    who = doc["devices"]
    print(f"authorises {doc['name']} {doc['version']} on {who} until {doc['valid_until']}")
    return EXIT_OK
