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


def test_agent_enroll_loads_nothing_controller_only():
    code = (
        "from fleetgate.cli import main\n"
        "parser = main.build_parser('agent')\n"
        "parser.parse_args(['agent', 'enroll', '--server', 'https://x', '--token', 't'])\n"
        "import fleetgate.agent.enroll\n"
    )
    assert _loaded_after(code) == []


def test_an_agent_without_a_broker_does_not_load_the_mqtt_extra():
    code = (
        "import sys, fleetgate.agent.server, fleetgate.agent.service, fleetgate.agent.config\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiomqtt', 'paho'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_cli_path_of_agent_run_loads_nothing_controller_only():
    code = (
        "from fleetgate.cli import main\n"
        "parser = main.build_parser('agent')\n"
        "args = parser.parse_args(['agent', 'run', '--config', 'x.toml'])\n"
        "import fleetgate.agent.config, fleetgate.agent.server  # what the handler imports\n"
    )
    assert _loaded_after(code) == []


def test_running_agent_process_imports_nothing_controller_only(make_agent, kit):
    """``python -X importtime`` lists every module the real ``agent run`` process imported,
    here after serving a ping and a stage (which loads the signature and extraction code)."""
    a = make_agent(start=False)
    a.start(env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[0] == 200
    assert a.get("/v1/health")[0] == 200
    a.stop()
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in a.log_text().splitlines()
        if line.startswith("import time:")
    }
    assert {"aiohttp", "fleetgate", "cryptography", "tarfile"} <= imported
    assert imported & set(CONTROLLER_ONLY) == set()


def test_everything_the_agent_loads_parses_as_python_3_10():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json, fleetgate.agent.server, fleetgate.agent.enroll\n"
            "import fleetgate.sim.demo_app\n"
            "import fleetgate.agent.mqtt_link, fleetgate.agent.mqtt_serve  # [mqtt] configured\n"
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


def test_restarting_on_a_release_checks_its_slot_without_cryptography(make_agent, kit):
    """Start-up verifies the current slot's files (hashlib) but never loads ``cryptography``:
    an agent idle between deployments stays ~10 MiB smaller (docs/agent.md, Light)."""
    a = make_agent()
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[0] == 200
    a.stop()
    a.cleanup()
    for log in a.workdir.glob("*.log"):
        log.unlink()
    a.start(env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert a.facts()["app_running"] is True and a.facts()["integrity_error"] is None
    a.stop()
    text = a.log_text()
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in text.splitlines()
        if line.startswith("import time:")
    }
    assert "hashlib" in imported and "fleetgate" in imported
    assert "cryptography" not in imported
    assert "verified in" in text  # the slot was checked
