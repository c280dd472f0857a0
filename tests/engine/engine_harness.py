"""Shared set-up for engine tests: a signed release, a store, a virtual fleet, a controller
with a virtual clock (soaks take no wall time but are measured and recorded). The virtual clock
also stands in for the store's clock, the authority soaks are measured on; leases still run on
the real store clock."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetgate.clock import to_iso
from fleetgate.config.policy_file import policy_from_dict
from fleetgate.core.policy import Policy
from fleetgate.engine.context import Clock
from fleetgate.engine.service import Controller, ControllerConfig
from fleetgate.sim.fleet import SimFleet
from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.store import Store
from fleetgate.transports.memory import MemoryTransport

ROOT = Path(__file__).resolve().parents[2]

FAST_POLICY: dict[str, Any] = {
    "allow_short_soak": True,
    "soak": {"canary": "10m", "between_waves": "5m"},
    "retries": {"attempts": 3, "backoff": "1s"},
}


class VirtualClock(Clock):
    """Time moves only when the engine sleeps (soaks, backoff). ``store_now`` is the same time
    seen as the store's clock; ``skew_s`` puts this controller's own clock (``now``,
    ``now_iso``) off by that much, as on a host with a wrong clock."""

    def __init__(self, skew_s: float = 0.0) -> None:
        self.t = time.time()
        self.slept = 0.0
        self.skew_s = skew_s

    async def store_now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def now(self) -> float:
        return self.t + self.skew_s

    def now_iso(self) -> str:
        return to_iso(datetime.fromtimestamp(self.now(), UTC))

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.t += seconds
            self.slept += seconds


def build_release(tmp: Path, version: str = "2.0.0") -> tuple[Path, Path]:
    """A signed bundle of the example app at ``version``; returns (bundle, public key)."""
    from fleetgate.artifacts.bundle import build_bundle
    from fleetgate.artifacts.keys import generate_keypair, load_private_key

    keys = tmp / "keys"
    if not (keys / "fleetgate-signing.key").exists():
        generate_keypair(keys)
    src = tmp / f"app-{version}"
    if not src.exists():
        shutil.copytree(ROOT / "examples" / "app", src)
        toml = src / "fleetgate.toml"
        text = toml.read_text()
        import re

        text = re.sub(r'(?m)^name = ".*"$', 'name = "app"', text, count=1)
        text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1)
        toml.write_text(text)
    out = tmp / "dist"
    built = build_bundle(src, load_private_key(keys / "fleetgate-signing.key"), out)
    return built.path, keys / "fleetgate-signing.pub"


@dataclass
class Harness:
    store: Store
    fleet: SimFleet
    controller: Controller
    clock: VirtualClock
    bundle: Path
    policy: Policy
    policy_doc: dict[str, Any]

    async def start(self, **kw: Any) -> str:
        return await self.controller.start(
            self.bundle, self.policy, policy_doc=self.policy_doc, **kw
        )

    async def events(self, dep: str) -> list[Any]:
        return await self.store.events(dep)


@contextlib.asynccontextmanager
async def harness(
    tmp: Path,
    *,
    devices: int = 40,
    faults: tuple[str, ...] = (),
    policy: dict[str, Any] | None = None,
    store_url: str | None = None,
    seed: int = 7,
) -> AsyncIterator[Harness]:
    from fleetgate.sim.faults import parse_fault

    bundle, pub = build_release(tmp)
    doc = policy or FAST_POLICY
    pol = policy_from_dict(doc, "test policy")
    spec = FleetSpec(
        devices=devices, faults=tuple(parse_fault(f) for f in faults), seed=seed, activate_s=0.0
    )
    fleet = SimFleet(spec)
    clock = VirtualClock()
    url = store_url or f"sqlite+aiosqlite:///{tmp}/fg.db"
    async with Store.open(url) as store, MemoryTransport(fleet) as transport:
        await store.replace_devices(fleet.devices)
        ctl = Controller(
            store,
            transport,
            ControllerConfig(tmp / "blobs", pub),
            clock=clock,
            store_clock=clock.store_now,
        )
        yield Harness(store, fleet, ctl, clock, bundle, pol, doc)
