"""The agent stays light: no controller-only module is imported, neither by importing the agent
nor along the CLI path that runs it, and everything it loads parses as Python 3.10."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

CONTROLLER_ONLY = [
    "sqlalchemy",
    "alembic",
    "fastapi",
    "uvicorn",
    "rich",
    "pydantic",
    "structlog",
    "prometheus_client",
    "yaml",
    "asyncpg",
    "aiosqlite",
    "stamina",
    "psutil",
]


def _loaded_after(code: str) -> list[str]:
    script = (
        f"import sys, json\n{code}\n"
        f"bad = {CONTROLLER_ONLY!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(bad))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_agent_loads_nothing_controller_only():
    assert _loaded_after("import fleetgate.agent.server, fleetgate.agent.service") == []


def test_the_cli_path_of_agent_run_loads_nothing_controller_only():
    code = (
        "from fleetgate.cli import main\n"
        "parser = main.build_parser('agent')\n"
        "args = parser.parse_args(['agent', 'run', '--config', 'x.toml'])\n"
        "import fleetgate.agent.config, fleetgate.agent.server  # what the handler imports\n"
    )
    assert _loaded_after(code) == []


def test_agent_check_process_imports_nothing_controller_only(tmp_path, kit):
    """``python -X importtime`` lists every module the real process imported."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[device]\nid = "a"\nhardware = "x"\n[agent]\ndata_dir = "d"\ntoken_env = "FG_T"\n'
        f'public_key = "{kit.pub_path}"\n'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "fleetgate",
            "agent",
            "check",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        env={"FG_T": "x", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "aiohttp" in imported and "fleetgate" in imported
    assert imported & set(CONTROLLER_ONLY) == set()


def test_everything_the_agent_loads_parses_as_python_3_10():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json, fleetgate.agent.server, fleetgate.sim.demo_app\n"
            "print(json.dumps([m.__file__ for n, m in sys.modules.items()\n"
            "                  if n.startswith('fleetgate') and getattr(m, '__file__', None)]))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    files = json.loads(out.stdout)
    assert any(f.endswith("agent/commands.py") for f in files)
    for name in files:
        ast.parse(Path(name).read_text(), filename=name, feature_version=(3, 10))
