"""A deployment's log, folded once and extended event by event (issue 12: a streaming fold).

``LogView`` holds what a controller needs from a deployment's log before it acts: the folded
state, the per-device command ledger, the seq of the newest event it saw, the
``deployment.created`` details and what ``EngineContext`` is rebuilt from (baselines, soak
samples, controls, ended soaks, the canaries' initial samples).

A controller builds one by reading the log **in pages** (``Store.events_page``), never as one
list of every event, and keeps it between calls: the next ``drive``, ``state`` or decision only
reads the events after ``last_seq`` (none, when this process wrote them all: the fenced lease
makes the driver the only writer while it drives). While it drives, the recorder extends the
view itself (``observe_recorded``), so nothing is re-read or re-folded inside a run. A view is
kept only after a drive or a read that succeeded: one that saw a refused append may hold
events the log never got, and is dropped (the next call folds the log from its start).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetgate.core.events import Event, StoredEvent
from fleetgate.core.machine import apply
from fleetgate.core.model import HealthSample
from fleetgate.core.state import DeploymentState
from fleetgate.engine.context import sample_from_dict
from fleetgate.engine.recorder import DeviceLedger

PAGE = 2000  # events per read while folding (bounded memory, few round trips)


@dataclass
class LogView:
    deployment_id: str
    state: DeploymentState
    ledger: DeviceLedger = field(default_factory=DeviceLedger)
    last_seq: int = 0
    created: Mapping[str, Any] | None = None
    baselines: dict[str, HealthSample | None] = field(default_factory=dict)
    sampled: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    control_pre: dict[str, Any] = field(default_factory=dict)
    control_pools: dict[str, list[str]] = field(default_factory=dict)
    soaks_ended: dict[str, bool] = field(default_factory=dict)
    canary_initial: dict[str, HealthSample] = field(default_factory=dict)

    @classmethod
    def empty(cls, deployment_id: str) -> LogView:
        return cls(deployment_id, DeploymentState.empty(deployment_id))

    def observe(self, ev: StoredEvent) -> None:
        """A stored event read from the log: fold it, and everything derived from it."""
        self.state = apply(self.state, ev)
        self.ledger.observe(ev)
        self.last_seq = max(self.last_seq, ev.seq)
        self.observe_recorded(ev)

    def observe_recorded(self, e: Event | StoredEvent) -> None:
        """What the context is rebuilt from (the recorder folds state and ledger itself)."""
        a = e.action
        d = e.details
        if a == "deployment.created":
            self.created = d
        elif a == "device.baseline" and e.device_id:
            # A baseline this process records is already in ``baselines`` when the driving
            # context shares the dict (``Controller._context``): the engine put the sample the
            # event holds there just before recording it. Read from the log: folded here.
            if isinstance(e, StoredEvent) or e.device_id not in self.baselines:
                self.baselines[e.device_id] = sample_from_dict(e.device_id, d.get("sample"))
        elif a == "soak.sampled":
            key = f"{d.get('stage', 0)}:{d.get('round', 'soak')}"
            self.sampled.setdefault(key, []).append(d)
        elif a == "canary.controls":
            self.control_pre.update(d.get("pre", {}))
            self.control_pools.update(d.get("pools", {}))
        elif a in ("soak.completed", "soak.stopped"):
            key = f"{d.get('stage', 0)}:{d.get('round', 'soak')}"
            self.soaks_ended[key] = a == "soak.completed"
        elif (
            a == "device.health"
            and e.device_id
            and d.get("stage") == 0
            and d.get("round") == "initial"
        ):
            sample = sample_from_dict(e.device_id, d.get("sample"))
            if sample is None:
                self.canary_initial.pop(e.device_id, None)
            else:
                self.canary_initial[e.device_id] = sample


class ViewCache:
    """The few most recently used views of one controller (a service drives many
    deployments; a CLI one). ``take`` removes a view: it is put back only by ``keep``."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._views: OrderedDict[str, LogView] = OrderedDict()

    def take(self, deployment_id: str) -> LogView | None:
        return self._views.pop(deployment_id, None)

    def keep(self, view: LogView) -> None:
        self._views[view.deployment_id] = view
        self._views.move_to_end(view.deployment_id)
        while len(self._views) > self._size:
            self._views.popitem(last=False)

    def drop(self, deployment_id: str) -> None:
        self._views.pop(deployment_id, None)
