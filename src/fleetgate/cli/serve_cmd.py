"""``fleetgate serve``: the long-running controller (REST API, worker, distribution point)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HELP = """\
Run the controller as a service: the REST API (OpenAPI at /api/v1/openapi.json), the worker
that drives every runnable deployment (also those a dead controller left mid-way), and the
distribution point devices fetch releases from ({public_url}/blobs/<sha256>).

Settings come from --config FILE (TOML), overridden by environment variables, overridden by
flags:
  [server]     listen (FLEETGATE_LISTEN, --listen; default 127.0.0.1:8420),
               public_url (FLEETGATE_PUBLIC_URL; default http://LISTEN),
               blob_dir (FLEETGATE_BLOB_DIR; default .fleetgate/blobs), max_upload_mb (2048)
  [store]      db (FLEETGATE_DB, --db; default SQLite under ./.fleetgate/)
  [controller] pubkey (FLEETGATE_PUBKEY), concurrency (200), parallel_deployments (4),
               poll_s (1.0), park_after_s (5.0: a soak wait this long parks the
               deployment until it is due, with no lease held)
API callers authenticate with a bearer token: fleetgate users add NAME --role ROLE.
SIGTERM stops the drives at their next step, releases their leases and exits 0.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the controller service (API + worker)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=None, help="service settings (TOML)")
    p.add_argument("--listen", default=None, help="HOST:PORT (default 127.0.0.1:8420)")
    p.set_defaults(handler=cmd_serve)


async def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from fleetgate.cli.main import DEFAULT_DB
    from fleetgate.server.config import load_serve_config
    from fleetgate.server.run import serve

    # --db is the global flag; its default already folds in FLEETGATE_DB. Only a value the user
    # typed (or the variable) outranks the config file's [store] db.
    typed_db = args.db if (args.db != DEFAULT_DB or os.environ.get("FLEETGATE_DB")) else None
    cfg = load_serve_config(args.config, listen=args.listen, db=typed_db, default_db=DEFAULT_DB)
    from fleetgate.server.logs import configure

    configure()
    print(
        f"fleetgate serve: http://{cfg.host}:{cfg.port}/api/v1 (public {cfg.public_url})",
        file=sys.stderr,
    )
    return await serve(cfg)
