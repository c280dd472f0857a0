"""The service's settings: a TOML file, overridden by ``FLEETGATE_*`` variables, overridden by
command-line flags. Every problem is one line naming the file (or variable) and the field.

```toml
[server]
listen = "127.0.0.1:8420"              # FLEETGATE_LISTEN
# FLEETGATE_PUBLIC_URL; devices fetch {public_url}/blobs/<sha256>
public_url = "https://fleet.example.com"
blob_dir = ".fleetgate/blobs"          # FLEETGATE_BLOB_DIR
max_upload_mb = 2048

[store]
db = "postgresql+asyncpg://…"          # FLEETGATE_DB / --db

[controller]
pubkey = "keys/fleetgate-signing.pub"  # FLEETGATE_PUBKEY
concurrency = 200                      # device calls in flight per deployment
parallel_deployments = 4               # deployments this process drives at once
poll_s = 1.0                           # how often the worker looks for runnable deployments
park_after_s = 5.0                     # a soak wait this long parks the deployment (wake_at)
# FLEETGATE_CREDENTIALS_DIR; self-enrolled devices' credentials (0600 files)
credentials_dir = ".fleetgate/credentials"
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgate.config.toml_file import read_toml
from fleetgate.errors import ValidationError

DEFAULT_LISTEN = "127.0.0.1:8420"
_KEYS = {
    "server": {"listen", "public_url", "blob_dir", "max_upload_mb"},
    "store": {"db"},
    "controller": {
        "pubkey",
        "concurrency",
        "parallel_deployments",
        "poll_s",
        "park_after_s",
        "credentials_dir",
    },
}


@dataclass(frozen=True)
class ServeConfig:
    host: str
    port: int
    public_url: str
    blob_dir: Path
    max_upload_mb: int
    db: str
    pubkey: Path | None
    concurrency: int
    parallel_deployments: int
    poll_s: float
    park_after_s: float
    credentials_dir: Path = Path(".fleetgate/credentials")


def parse_listen(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError([f"{where}: expected HOST:PORT, got {value!r}"])
    return host.strip("[]"), int(port)


def load_serve_config(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    listen: str | None = None,
    db: str | None = None,
    default_db: str,
) -> ServeConfig:
    env = os.environ if env is None else env
    data: dict[str, Any] = read_toml(path, "no such config file") if path is not None else {}
    where = str(path) if path is not None else "config"
    problems: list[str] = []
    for table, value in data.items():
        if table not in _KEYS or not isinstance(value, dict):
            problems.append(f"{where}: {table}: unknown section (expected {', '.join(_KEYS)})")
            continue
        for key in value:
            if key not in _KEYS[table]:
                problems.append(f"{where}: {table}.{key}: unknown key")
    if problems:
        raise ValidationError(problems)

    def pick(table: str, key: str, var: str, flag: str | None, default: Any) -> tuple[Any, str]:
        if flag is not None:
            return flag, f"--{key}"
        if env.get(var):
            return env[var], var
        if key in data.get(table, {}):
            return data[table][key], f"{where}: {table}.{key}"
        return default, f"{table}.{key}"

    def number(table: str, key: str, default: float, lo: float, integer: bool) -> Any:
        value, src = pick(table, key, f"FLEETGATE_{key.upper()}", None, default)
        try:
            n = int(value) if integer else float(value)
        except (TypeError, ValueError):
            problems.append(f"{src}: expected a number, got {value!r}")
            return default
        if isinstance(value, bool) or n < lo:
            problems.append(f"{src}: expected a number >= {lo:g}, got {value!r}")
            return default
        return n

    listen_v, listen_src = pick("server", "listen", "FLEETGATE_LISTEN", listen, DEFAULT_LISTEN)
    host, port = parse_listen(str(listen_v), listen_src)
    public_v, public_src = pick("server", "public_url", "FLEETGATE_PUBLIC_URL", None, None)
    public_url = str(public_v) if public_v else f"http://{host}:{port}"
    if not public_url.startswith(("http://", "https://")):
        problems.append(f"{public_src}: expected an http(s) URL, got {public_url!r}")
    blob_v, _ = pick("server", "blob_dir", "FLEETGATE_BLOB_DIR", None, ".fleetgate/blobs")
    base = path.parent if path is not None else Path()
    db_v, _ = pick("store", "db", "FLEETGATE_DB", db, default_db)
    key_v, _ = pick("controller", "pubkey", "FLEETGATE_PUBKEY", None, None)
    creds_v, _ = pick(
        "controller", "credentials_dir", "FLEETGATE_CREDENTIALS_DIR", None, ".fleetgate/credentials"
    )
    cfg = ServeConfig(
        host=host,
        port=port,
        public_url=public_url.rstrip("/"),
        blob_dir=base / str(blob_v),
        max_upload_mb=number("server", "max_upload_mb", 2048, 1, True),
        db=str(db_v),
        pubkey=(base / str(key_v)) if key_v else None,
        concurrency=number("controller", "concurrency", 200, 1, True),
        parallel_deployments=number("controller", "parallel_deployments", 4, 1, True),
        poll_s=number("controller", "poll_s", 1.0, 0.05, False),
        park_after_s=number("controller", "park_after_s", 5.0, 0.0, False),
        credentials_dir=(base / str(creds_v)).absolute(),
    )
    if problems:
        raise ValidationError(problems)
    return cfg
