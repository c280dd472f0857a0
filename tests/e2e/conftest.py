"""The demo's real agents get their ports from ``tests/ports.py``.

``fleetgate.sim.demo`` picks each agent's and app's port by binding port 0 and closing it; the
app binds it only at activation, seconds later. With tests running in parallel (pytest-xdist
workers, other suites on the machine) an outgoing connection or another worker could take it
in between (seen: the demo app's ``OSError: [Errno 98] Address already in use``, and the
bootstrap failing with "app exited with code 1 before becoming healthy").
"""

from __future__ import annotations

import pytest

from ports import free_port


@pytest.fixture(autouse=True)
def _demo_ports_from_the_shared_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleetgate.sim.demo._free_port", free_port)
