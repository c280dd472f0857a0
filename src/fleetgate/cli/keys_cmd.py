"""``fleetgate keys generate --out DIR``: create the Ed25519 signing key pair.

Writes ``DIR/fleetgate-signing.key`` (PEM PKCS#8, mode 0600) and ``DIR/fleetgate-signing.pub``
(PEM) and prints both paths (``--json``: ``{"private_key", "public_key"}``). Never overwrites an
existing key: that is an input error (exit 2) naming the file, and nothing is written. The
private key stays with whoever builds releases; devices get only the ``.pub``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fleetgate.artifacts.keys import generate_keypair


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage the release signing keys")
    ksub = keys.add_subparsers(dest="keys_cmd", metavar="COMMAND", parser_class=type(keys))
    gen = ksub.add_parser("generate", help="create an Ed25519 signing key pair")
    gen.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for keys")
    gen.add_argument("--json", action="store_true", help="one JSON document on stdout")
    gen.set_defaults(handler=cmd_generate)
    keys.set_defaults(handler=lambda _a: (keys.print_help(sys.stderr), 2)[1])


def cmd_generate(args: argparse.Namespace) -> int:
    key_path, pub_path = generate_keypair(args.out)
    if args.json:
        print(json.dumps({"private_key": str(key_path), "public_key": str(pub_path)}))
    else:
        print(f"private key: {key_path}  (keep secret; mode 0600)")
        print(f"public key:  {pub_path}  (install on every device)")
    return 0
