"""A device transport that times every call into the service's latency histogram."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Histogram

from fleetgate.core.model import Device
from fleetgate.transports.base import DeviceTransport


class TimedTransport(DeviceTransport):
    def __init__(self, inner: DeviceTransport, histogram: Histogram) -> None:
        self.inner, self.histogram = inner, histogram

    async def _timed(self, call: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            self.histogram.observe(time.perf_counter() - t0)

    async def ping(self, device: Device) -> Any:
        return await self._timed(self.inner.ping(device))

    async def facts(self, device: Device) -> Any:
        return await self._timed(self.inner.facts(device))

    async def stage(self, device: Device, **kw: Any) -> Any:
        return await self._timed(self.inner.stage(device, **kw))

    async def activate(self, device: Device, **kw: Any) -> Any:
        return await self._timed(self.inner.activate(device, **kw))

    async def rollback(self, device: Device, **kw: Any) -> Any:
        return await self._timed(self.inner.rollback(device, **kw))

    async def commit(self, device: Device, **kw: Any) -> Any:
        return await self._timed(self.inner.commit(device, **kw))

    async def health(self, device: Device) -> Any:
        return await self._timed(self.inner.health(device))

    async def logs(self, device: Device, lines: int = 200) -> Any:
        return await self._timed(self.inner.logs(device, lines))

    async def aclose(self) -> None:
        await self.inner.aclose()
