"""What the parts of the controller share: its settings and the attributes and helpers every
part (starting, deciding, leasing, driving) uses. ``Controller`` (engine/service.py) is the
one class that provides them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetgate.core.state import DeploymentState
from fleetgate.engine.context import (
    Clock,
    StoreClock,
)
from fleetgate.engine.logview import PAGE, LogView, ViewCache
from fleetgate.engine.ports import StorePort
from fleetgate.errors import (
    InputError,
)
from fleetgate.transports.client import DeviceClient

LEASE_TTL_ENV = "FLEETGATE_LEASE_TTL"


def default_lease_ttl() -> float:
    """60 s, or ``FLEETGATE_LEASE_TTL`` (seconds): how long a silent driver keeps a deployment."""
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return 60.0
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise InputError(f"{LEASE_TTL_ENV}={raw!r}: expected a positive number of seconds")
    return ttl


@dataclass
class ControllerConfig:
    blob_dir: Path
    # Only verifying a release needs it: ``start`` and a drive that still runs PREPARE. Human
    # decisions on a deployment past PREPARE (approve, reject, resume, rollback) do not.
    public_key: Path | None
    dist_host: str = "127.0.0.1"
    dist_port: int = 0
    concurrency: int = 200
    lease_ttl_s: float = field(default_factory=default_lease_ttl)
    # A standing distribution point (``fleetgate serve``'s ``public_url``) that serves the blob
    # directory at ``{public_url}/blobs/{sha256}``; None: each drive serves the blob itself on
    # ``dist_host:dist_port`` for as long as it runs.
    public_url: str | None = None
    # Service mode: a soak wait this long or longer parks the deployment (``wake_at``) and
    # releases its lease; None: the driving process sleeps through it (the CLI).
    park_after_s: float | None = None

    def require_public_key(self) -> Path:
        if self.public_key is None:
            raise InputError(
                "no public key to verify the release's signature: give --pubkey or set "
                "FLEETGATE_PUBKEY"
            )
        return self.public_key


class ControllerBase:
    store: StorePort
    transport: DeviceClient
    config: ControllerConfig
    clock: Clock
    holder: str
    store_clock: StoreClock | None

    views: ViewCache

    async def _view(self, dep_id: str) -> LogView:
        """The deployment's log folded up to its newest event: the view this controller kept
        from its last call, extended by the events written since (read in pages), or folded
        from the start in pages. Taken out of the cache: ``views.keep`` puts it back."""
        view = self.views.take(dep_id) or LogView.empty(dep_id)
        while True:
            page = await self.store.events_page(dep_id, view.last_seq, PAGE)
            for ev in page:
                view.observe(ev)
            if len(page) < PAGE:
                break
        if view.created is None:
            raise InputError(f"no deployment {dep_id!r}")
        return view

    async def _events(self, dep_id: str) -> list[Any]:
        events: list[Any] = await self.store.events(dep_id)
        if not events:
            raise InputError(f"no deployment {dep_id!r}")
        return events

    async def drive(self, deployment_id: str) -> DeploymentState:
        raise NotImplementedError  # engine.service.Controller


def summary(state: DeploymentState) -> dict[str, Any]:
    """The deployments table's cached summary of a state (the log is the truth)."""
    return {
        "manual_intervention": list(state.manual_intervention),
        "halt_reason": state.halt_reason,
        "targets": len(state.devices),
    }
