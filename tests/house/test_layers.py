"""The package layout's dependency rules (DESIGN.md §2), checked on the source: ``core`` is pure
and imports only itself and ``errors``; the engine does not import the report or the CLI (the
shape of ``deployment.created`` belongs to ``core``); the simulator does not import the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "fleetgate"


def imports_of(package: str) -> dict[str, set[str]]:
    """module file -> every ``fleetgate.*`` module it imports (at any depth, lazily or not)."""
    out: dict[str, set[str]] = {}
    for path in (SRC / package).rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        out[str(path.relative_to(SRC))] = {m for m in found if m.startswith("fleetgate")}
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("engine", ("fleetgate.report", "fleetgate.cli", "fleetgate.api")),
        ("sim", ("fleetgate.cli", "fleetgate.api")),
        ("store", ("fleetgate.engine", "fleetgate.cli", "fleetgate.api")),
        ("transports", ("fleetgate.sim", "fleetgate.engine", "fleetgate.cli")),
    ],
)
def test_layer_does_not_import(package: str, forbidden: tuple[str, ...]) -> None:
    bad = {
        f: sorted(m for m in mods if m.startswith(forbidden))
        for f, mods in imports_of(package).items()
    }
    assert {f: m for f, m in bad.items() if m} == {}


def test_core_is_pure() -> None:
    allowed = ("fleetgate.core", "fleetgate.errors")
    bad = {
        f: sorted(m for m in mods if not m.startswith(allowed))
        for f, mods in imports_of("core").items()
    }
    assert {f: m for f, m in bad.items() if m} == {}
