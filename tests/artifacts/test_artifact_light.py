"""The agent-side artifact modules stay light: importing them in a fresh interpreter loads no
controller dependency and not the (controller-side) distribution server."""

from __future__ import annotations

import json
import subprocess
import sys

AGENT_SIDE = ["keys", "container", "signing", "payload", "bundle", "extract", "fetch"]
FORBIDDEN_TOP = {
    "sqlalchemy", "alembic", "aiosqlite", "asyncpg", "fastapi", "uvicorn", "pydantic",
    "structlog", "prometheus_client", "rich", "yaml", "stamina",
}  # fmt: skip


def test_agent_side_modules_import_nothing_controller_only() -> None:
    code = (
        "import json, sys\n"
        + "".join(f"import fleetgate.artifacts.{m}\n" for m in AGENT_SIDE)
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(json.loads(out))
    assert not {m for m in loaded if m.split(".")[0] in FORBIDDEN_TOP}
    assert "fleetgate.artifacts.distribution" not in loaded
    assert not {m for m in loaded if m.startswith("aiohttp.web")}
    assert not {m for m in loaded if m.startswith("fleetgate.") and m.split(".")[1] not in (
        "artifacts", "core", "errors"
    )}  # fmt: skip
