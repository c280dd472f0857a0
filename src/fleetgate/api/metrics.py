"""``GET /metrics``: Prometheus text, from a registry of the service's own (not the process
global one, so two apps in one process — tests — do not collide).

Deployments by phase and devices by status are read from the store's cached summaries when
scraped (cheap: one query each), not kept in memory: any controller of a cluster answers the
same. Counters count what this process did.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deployments = Gauge(
            "fleetgate_deployments", "Deployments by phase", ["phase"], registry=r
        )
        self.devices = Gauge(
            "fleetgate_devices", "Devices by inventory state", ["state"], registry=r
        )
        self.requests = Counter(
            "fleetgate_api_requests", "API requests by route and status", ["status"], registry=r
        )
        self.events = Gauge(
            "fleetgate_events_written", "Events in the audit log (all controllers)", registry=r
        )
        self.takeovers = Counter(
            "fleetgate_lease_takeovers",
            "Deployments this process picked up from another controller",
            registry=r,
        )
        self.rollbacks = Counter(
            "fleetgate_rollbacks", "Rollbacks requested through the API", registry=r
        )
        self.agent_latency = Histogram(
            "fleetgate_agent_call_seconds",
            "Latency of calls to device agents",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    async def render(self, store: Any) -> bytes:
        phases = Tally(d.status for d in await store.list_deployments())
        self.deployments.clear()
        for phase, n in phases.items():
            self.deployments.labels(phase=phase).set(n)
        states = Tally(d.state.value for d in await store.list_devices())
        self.devices.clear()
        for state, n in states.items():
            self.devices.labels(state=state).set(n)
        head, _hash = await store.chain_head()
        self.events.set(head)
        return generate_latest(self.registry)
