"""Events recorded together are appended together, whatever else is queued beside them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetgate.core.events import Event, StoredEvent
from fleetgate.core.state import DeploymentState
from fleetgate.engine.recorder import Recorder
from fleetgate.errors import IllegalTransition


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.seq = 0

    async def append_many(
        self,
        new: list[Event],
        *,
        fence: Any = None,
        expect_last: int | None = None,
        last_only: bool = False,
    ) -> list[StoredEvent]:
        await asyncio.sleep(0)
        self.batches.append([e.device_id or e.action for e in new])
        out = []
        for e in new:
            self.seq += 1
            out.append(
                StoredEvent(
                    self.seq,
                    e.ts,
                    e.deployment_id,
                    e.device_id,
                    e.actor,
                    e.action,
                    e.outcome,
                    e.details,
                    "",
                    "",
                )
            )
        return out


def created(rec: Recorder) -> Event:
    return rec.make(
        "deployment.created",
        details={
            "stages": [["c1", "c2", "c3"], ["w1", "w2", "w3", "w4"]],
            "artifact": "vision v2",
            "fleet_total": 7,
            "sha256": "ab" * 32,
        },
    )


def now() -> str:
    return "2026-11-29T09:00:00+00:00"


async def test_a_group_is_never_split_across_batches() -> None:
    sink = Sink()
    async with Recorder(sink, DeploymentState.empty("dep-1"), now, batch_max=3) as rec:
        await rec.record_event(created(rec))
        await rec.record("prepare.passed")
        # Two singles queued first, then a pair: a batch of 3 would cut the pair in two.
        await asyncio.gather(
            rec.record("device.staged", device_id="c1"),
            rec.record("device.staged", device_id="c2"),
            rec.record_together(
                [
                    rec.make("device.staged", device_id="c3"),
                    rec.make("device.activated", device_id="c3"),
                ]
            ),
        )
    pair_batches = [b for b in sink.batches if "c3" in b]
    assert pair_batches == [["c3", "c3"]], sink.batches
    assert rec.written == 6
    assert sink.batches[-2:] == [["c1", "c2"], ["c3", "c3"]]


async def test_an_illegal_event_in_a_group_writes_none_of_it() -> None:
    sink = Sink()
    async with Recorder(sink, DeploymentState.empty("dep-1"), now) as rec:
        await rec.record_event(created(rec))
        before = rec.state
        with pytest.raises(IllegalTransition):
            await rec.record_together(
                [rec.make("prepare.passed"), rec.make("approval.granted", actor="alice")]
            )
        assert rec.state is before  # the legal first half was not applied either
    assert sink.batches == [["deployment.created"]]


async def test_settled_only_while_every_applied_event_is_durable() -> None:
    """``settled`` gates the driver's summary row: it must be false while the state holds an
    event the log has not got — queued, refused, or applied when an observer then failed."""
    sink = Sink()
    seen: list[str] = []

    def observer(ev: Event) -> None:
        seen.append(ev.action)
        if ev.action == "prepare.passed":
            raise RuntimeError("observer broke")

    async with Recorder(sink, DeploymentState.empty("dep-1"), now, observer=observer) as rec:
        assert rec.settled
        await rec.record_event(created(rec))
        assert rec.settled and rec.last_seq == 1
        with pytest.raises(RuntimeError, match="observer broke"):
            await rec.record("prepare.passed")
        assert rec.state.last_action.startswith("prepare.passed") and seen[-1] == "prepare.passed"
        assert not rec.settled  # applied to the state, never queued: not the log's fold
    assert sink.seq == 1
