"""``StorePort``: what the engine needs from the store, as a typed protocol (``fleetgate.store.
Store`` satisfies it structurally; tests may pass anything that does). The engine imports the
store's value types only, never the store itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from fleetgate.core.events import ChainReport, Event, StoredEvent
from fleetgate.core.model import Device
from fleetgate.store.catalog import ReleaseRecord
from fleetgate.store.leases import Fence, Lease
from fleetgate.store.store import DeploymentRecord


class StorePort(Protocol):
    # -- transactions, the clock, the log's lock
    def transaction(self) -> AbstractAsyncContextManager[None]: ...
    async def now(self) -> datetime: ...
    async def lock_log(self) -> None: ...

    # -- the inventory
    async def list_devices(self) -> list[Device]: ...
    async def get_devices(self, ids: Sequence[str]) -> list[Device]: ...
    async def replace_devices(self, new: Sequence[Device], *, now: str | None = None) -> None: ...
    async def upsert_devices(
        self, changed: Sequence[Device], *, now: str | None = None
    ) -> None: ...
    async def quarantined(self) -> dict[str, str]: ...
    async def set_quarantine(
        self, entries: Mapping[str, str], deployment_id: str | None, *, now: str | None = None
    ) -> None: ...

    # -- the log
    async def append(self, event: Event, *, fence: Fence | None = None) -> StoredEvent: ...
    async def append_many(
        self,
        new: Sequence[Event],
        *,
        fence: Fence | None = None,
        expect_last: int | None = None,
        last_only: bool = False,
    ) -> list[StoredEvent]: ...
    def iter_events(
        self,
        deployment_id: str | None = None,
        after_seq: int = 0,
        *,
        device_id: str | None = None,
        page_size: int = ...,
    ) -> AsyncIterator[StoredEvent]: ...
    async def events(
        self, deployment_id: str | None = None, after_seq: int = 0, *, device_id: str | None = None
    ) -> list[StoredEvent]: ...
    async def events_page(
        self, deployment_id: str | None, after_seq: int = 0, limit: int = ...
    ) -> list[StoredEvent]: ...
    async def latest_seq(self, deployment_id: str) -> int: ...
    async def chain_head(self) -> tuple[int, str]: ...
    async def verify(self) -> ChainReport: ...

    # -- deployments, releases
    async def create_deployment(
        self,
        deployment_id: str,
        artifact_label: str,
        sha256: str,
        data: Mapping[str, Any],
        *,
        status: str = ...,
        now: str | None = None,
    ) -> DeploymentRecord: ...
    async def update_deployment(
        self,
        deployment_id: str,
        status: str,
        data: Mapping[str, Any],
        *,
        now: str | None = None,
        fence: Fence | None = None,
        expect_last: int | None = None,
    ) -> DeploymentRecord: ...
    async def get_deployment(self, deployment_id: str) -> DeploymentRecord | None: ...
    async def list_deployments(self) -> list[DeploymentRecord]: ...
    async def set_wake(
        self, deployment_id: str, wake_at: datetime | None, *, fence: Fence | None = None
    ) -> None: ...
    async def get_release(self, sha256: str) -> ReleaseRecord | None: ...

    # -- leases and device sequence numbers
    async def acquire_lease(
        self, deployment_id: str, holder: str, ttl_s: float
    ) -> Lease | None: ...
    async def renew_lease(
        self, deployment_id: str, holder: str, epoch: int, ttl_s: float
    ) -> bool: ...
    async def release_lease(self, deployment_id: str, holder: str, epoch: int) -> bool: ...
    async def get_lease(self, deployment_id: str) -> Lease | None: ...
    async def next_device_seq(self, device_id: str) -> int: ...
