"""Every engine action becomes a durable event before the engine acts on its outcome.

``Recorder.record`` (1) builds the event with the injected clock, (2) steps the deployment state
machine — an illegal event raises here, before anything is written — and (3) waits until the event
is committed to the hash-chained log. Callers therefore never proceed on an action that is not in
the log (DESIGN.md invariants 7 and 8).

Group commit: concurrent ``record`` calls (hundreds of devices staging in parallel) are written by
one flusher task in batches with ``Store.append_many`` — one transaction per batch, not per
event — and every caller of the batch is released when it commits. Order in the log is the order
in which ``record`` was called, which is the order the state machine saw.

Fencing (invariant 9): a recorder made with the driver's lease ``fence`` passes it on every flush,
so the store refuses the batch once another controller took the lease over (``LeaseLost``). The
first failed flush fails every queued record and closes the recorder: later ``record`` calls
raise the same error, so nothing after a refused batch is ever written.

The recorder also keeps the per-device command ledger (``DeviceLedger``): the last command sent to
each device with its ``seq`` and whether its result was recorded. After a controller crash the
ledger is rebuilt from the log, so an in-flight command is re-sent with the *same* seq and the agent
answers it from its record instead of executing it twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fleetgate.core.events import Event, StoredEvent
from fleetgate.core.machine import apply
from fleetgate.core.state import DeploymentState

if TYPE_CHECKING:
    from fleetgate.store.leases import Fence


class EventSink(Protocol):
    """Where a recorder appends: ``Store.append_many``'s contract. The recorder asks for the
    last stored event only (``last_only``); a sink may return more."""

    async def append_many(
        self,
        new: list[Event],
        *,
        fence: Fence | None = None,
        expect_last: int | None = None,
        last_only: bool = False,
    ) -> list[StoredEvent]: ...


_INTENTS = {
    "device.stage_requested": "stage",
    "device.activate_requested": "activate",
    "device.rollback_requested": "rollback",
    "device.commit_requested": "commit",
}
_RESULTS = {
    "device.staged": "stage",
    "device.activated": "activate",
    "device.deploy_failed": None,  # ends whichever command was pending
    "device.rolled_back": "rollback",
    "device.rollback_failed": "rollback",
    "device.committed": "commit",
    "device.commit_failed": "commit",
}


@dataclass
class PendingCommand:
    command: str
    seq: int
    release: str | None


@dataclass
class DeviceLedger:
    """Commands per device within this deployment: the seq counter and the in-flight one."""

    commands: dict[str, int] = field(default_factory=dict)
    pending: dict[str, PendingCommand] = field(default_factory=dict)
    last: dict[str, str] = field(default_factory=dict)  # the last command sent (its intent)

    def observe(self, ev: Event | StoredEvent) -> None:
        dev = ev.device_id
        if dev is None:
            return
        if ev.action in _INTENTS:
            self.commands[dev] = self.commands.get(dev, 0) + 1
            self.last[dev] = _INTENTS[ev.action]
            rel = ev.details.get("release") or ev.details.get("to")
            self.pending[dev] = PendingCommand(
                _INTENTS[ev.action], int(ev.details["seq"]), str(rel) if rel else None
            )
        elif ev.action in _RESULTS:
            want = _RESULTS[ev.action]
            cur = self.pending.get(dev)
            if cur is not None and (want is None or cur.command == want):
                del self.pending[dev]

    def pending_for(self, device_id: str, command: str) -> PendingCommand | None:
        cur = self.pending.get(device_id)
        return cur if cur is not None and cur.command == command else None


class Recorder:
    def __init__(
        self,
        sink: EventSink,
        state: DeploymentState,
        now: Callable[[], str],
        *,
        history: Iterable[Event | StoredEvent] = (),
        batch_max: int = 500,
        fence: Fence | None = None,
        ledger: DeviceLedger | None = None,
        last_seq: int = 0,
        observer: Callable[[Event], None] | None = None,
    ) -> None:
        self._sink = sink
        self._fence = fence
        self.state = state
        self._now = now
        # A ledger already folded from the log (``LogView``), or one built from ``history``.
        self.ledger = ledger if ledger is not None else DeviceLedger()
        # Told of every event recorded, once the machine accepted it (``LogView``).
        self._observer = observer
        # The seq of the newest event of this deployment this recorder knows: a fenced
        # recorder's appends are refused (``LogMoved``) once anyone else wrote to the
        # deployment's log (a human decision), so it never drives on a state the log left.
        self.last_seq = last_seq
        for ev in history:
            self.ledger.observe(ev)
            if isinstance(ev, StoredEvent):
                self.last_seq = max(self.last_seq, ev.seq)
        self._queue: list[tuple[tuple[Event, ...], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._batch_max = batch_max
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self.written = 0
        self._unwritten = 0  # events applied to ``state`` and not yet durable

    @property
    def deployment_id(self) -> str:
        return self.state.deployment_id

    @property
    def settled(self) -> bool:
        """``state`` is the fold of the log up to ``last_seq``: every event applied to it is
        durable and no batch was refused. (Otherwise ``state`` may hold what the log never
        got, and must not be published as the deployment's status.)"""
        return self._failure is None and self._unwritten == 0

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._flusher(), name="fleetgate-recorder-flush")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                # The flusher's own cancellation ends here; the caller's is passed on.
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise

    def make(
        self,
        action: str,
        *,
        device_id: str | None = None,
        outcome: str = "ok",
        actor: str = "fleetgate",
        details: Mapping[str, Any] | None = None,
    ) -> Event:
        return Event(
            ts=self._now(),
            deployment_id=self.state.deployment_id,
            action=action,
            outcome=outcome,
            device_id=device_id,
            actor=actor,
            details=dict(details or {}),
        )

    async def record(
        self,
        name: str,
        /,
        *,
        device_id: str | None = None,
        outcome: str = "ok",
        actor: str = "fleetgate",
        **details: Any,
    ) -> None:
        """Validate, then wait until the event is durable."""
        ev = self.make(name, device_id=device_id, outcome=outcome, actor=actor, details=details)
        await self.record_event(ev)

    async def record_event(self, ev: Event) -> None:
        await self.record_together([ev])

    async def record_together(self, events: Sequence[Event]) -> None:
        """Write ``events`` in one append: a reader never sees the first without the rest.

        (A verdict and the approval request it opens are one fact; a watcher that sees the
        phase change must already find the request in the log.)
        """
        if self._failure is not None:
            raise self._failure  # a batch was refused: nothing after it may be written
        if self._closed or self._task is None:
            raise RuntimeError("recorder is not running")
        if len(events) > self._batch_max:
            raise ValueError(f"at most {self._batch_max} events can be written together")
        state = self.state
        for ev in events:
            state = apply(state, ev)  # raises IllegalTransition: nothing written
        self.state = state
        # Counted before the observers run: one that raises leaves the state holding events
        # that were never queued, which must not read as settled (``_cache_status``).
        self._unwritten += len(events)
        for ev in events:
            self.ledger.observe(ev)
            if self._observer is not None:
                self._observer(ev)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((tuple(events), fut))
        self._wake.set()
        await fut

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                # Whole groups only: events recorded together are appended together.
                taken, size = 0, 0
                for group, _ in self._queue:
                    if taken and size + len(group) > self._batch_max:
                        break
                    taken, size = taken + 1, size + len(group)
                batch = self._queue[:taken]
                del self._queue[:taken]
                try:
                    stored = await self._sink.append_many(
                        [ev for group, _ in batch for ev in group],
                        fence=self._fence,
                        expect_last=self.last_seq if self._fence is not None else None,
                        last_only=True,
                    )
                    if stored:
                        self.last_seq = stored[-1].seq
                except BaseException as exc:
                    if not isinstance(exc, asyncio.CancelledError):
                        self._failure = exc
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    # The store failed: nothing after this may be written out of order.
                    for _, fut in self._queue:
                        if not fut.done():
                            fut.set_exception(exc)
                    self._queue.clear()
                    self._closed = True
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    return
                self.written += size
                self._unwritten -= size
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
            if self._closed:
                return
