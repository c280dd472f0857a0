"""Fixtures for the agent tests: one key pair, a few signed demo-app bundles and a blob server
shared by the whole session (building them once keeps the suite fast), and ``make_agent``,
which starts real agent processes and kills them (and their apps) at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_harness import AgentProc, BlobServer, Release, build

from fleetgate.artifacts.keys import generate_keypair, load_private_key


@dataclass
class Kit:
    root: Path
    key_path: Path
    pub_path: Path
    key: Any
    server: BlobServer
    v1: Release
    v2: Release
    bad: Release  # crashes at start

    def release(self, name: str, version: str, mode: str = "ok", **kw: Any) -> Release:
        bundle = build(self.root, self.key, name, version, mode, **kw)
        return Release(bundle, self.server.publish(bundle))


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    root = tmp_path_factory.mktemp("agent-kit")
    key_path, pub_path = generate_keypair(root / "keys")
    key = load_private_key(key_path)
    with BlobServer(root / "blobs") as server:

        def rel(version: str, mode: str = "ok") -> Release:
            bundle = build(root, key, "demo", version, mode)
            return Release(bundle, server.publish(bundle))

        yield Kit(
            root,
            key_path,
            pub_path,
            key,
            server,
            rel("1.0.0"),
            rel("2.0.0"),
            rel("3.0.0", "crash-at-start"),
        )


@pytest.fixture
def make_agent(tmp_path: Path, kit: Kit) -> Iterator[Callable[..., AgentProc]]:
    agents: list[AgentProc] = []

    def factory(name: str = "a", start: bool = True, **kw: Any) -> AgentProc:
        agent = AgentProc(tmp_path / name, kit.pub_path, **kw)
        agents.append(agent)
        if start:
            agent.start()
        return agent

    yield factory
    for agent in agents:
        agent.cleanup()
