"""Issue 12: fewer agent calls with the same health checks, and a kept (streaming) fold.

Every guardrail check still happens: after every wave, every device deployed so far has a
health verdict recorded for that wave; the pre-flight is one call; an agent that does not carry
health in its other answers is asked apart (nothing is skipped); a controller that keeps its
fold still sees decisions another controller wrote.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from engine_harness import FAST_POLICY, harness

from fleetgate.core.machine import fold
from fleetgate.core.model import Device, HealthSample
from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.engine.service import Controller, Decision
from fleetgate.transports.base import ActivateResult, Facts, RollbackResult
from fleetgate.transports.memory import MemoryTransport

T = TypeVar("T")
D = DeviceStatus
ZERO_SOAK = {**FAST_POLICY, "soak": {"canary": 0, "between_waves": 0}}


class Counting(MemoryTransport):
    """Counts every call by name; ``old_agent``: answers as an agent before issue 12 (no
    health inside facts, activate or rollback answers, no rollback copy in health)."""

    def __init__(self, inner: MemoryTransport, old_agent: bool = False) -> None:
        super().__init__(inner.fleet)
        self.calls: Counter[str] = Counter()
        self.by_device: Counter[tuple[str, str]] = Counter()
        self.old_agent = old_agent

    async def call(
        self,
        device: Device,
        command: str,
        body: dict[str, Any] | None,
        parse: Callable[[str, Any], T],
    ) -> T:
        self.calls[command] += 1
        self.by_device[(command, device.id)] += 1
        out = await super().call(device, command, body, parse)
        if self.old_agent:
            if isinstance(out, Facts | ActivateResult | RollbackResult):
                return replace(out, health=None)  # type: ignore[return-value]
            if isinstance(out, HealthSample):
                return replace(out, rollback_available=None)  # type: ignore[return-value]
        return out


async def run_to_complete(h: Any, transport: Counting) -> str:
    h.controller.transport = transport
    dep = await h.start()
    state = await h.controller.drive(dep)
    assert state.phase is Phase.AWAITING_APPROVAL, state.halt_reason
    state = await h.controller.decide(dep, Decision("approval.granted", "alice", None, {}))
    assert state.phase is Phase.COMPLETE, state.halt_reason
    return dep


@pytest.mark.parametrize("policy", [FAST_POLICY, ZERO_SOAK], ids=["soak", "zero-soak"])
async def test_every_deployed_device_is_checked_after_every_wave_with_one_preflight_call(
    tmp_path: Path, policy: dict[str, Any]
) -> None:
    async with harness(tmp_path, policy=policy) as h:
        transport = Counting(h.controller.transport)
        dep = await run_to_complete(h, transport)
        events = await h.events(dep)
        state = fold(dep, events)
        assert transport.calls["ping"] == 0  # the facts answer proves the agent reachable
        # One pre-flight call per targeted device; CONFIRM read the copy from health. (The
        # rollback drill's canary is also asked before its drill rollback.)
        facts = {i: transport.by_device[("facts", i)] for i in state.devices}
        assert facts == {i: 2 if i == state.drill_device else 1 for i in state.devices}
        assert transport.calls["logs"] == 0  # nobody failed: no evidence to collect
        for stage in range(1, len(state.stages)):
            deployed_by_then = {i for st in state.stages[: stage + 1] for i in st}
            checked = {
                e.device_id
                for e in events
                if e.action == "device.health"
                and e.details.get("stage") == stage
                and e.details.get("round") == "post-soak"
            }
            assert checked == deployed_by_then, f"wave {stage}: unchecked devices"
        confirmed = {e.device_id for e in events if e.details.get("round") == "confirm"}
        assert confirmed == set(state.devices)
        baselines = [e for e in events if e.action == "device.baseline"]
        assert len(baselines) == len(state.devices)
        assert all(e.details["sample"] is not None for e in baselines)
        checked_copy = next(e for e in events if e.action == "confirm.checked")
        assert sorted(checked_copy.details["rollback_copies"]["ok"]) == sorted(state.devices)


def health_events_by_device(events: list[Any], state: Any) -> dict[str, tuple[int, int]]:
    """device -> (its ``device.health`` verdicts, of which smoke tests), the drill canary aside
    (its drill adds rounds of its own)."""
    out = {}
    for i in state.devices:
        if i == state.drill_device:
            continue
        mine = [e for e in events if e.action == "device.health" and e.device_id == i]
        out[i] = (len(mine), sum(e.details["round"] == "smoke" for e in mine))
    return out


@pytest.mark.parametrize("old_agent", [False, True], ids=["carried", "old-agent"])
async def test_the_smoke_test_judges_the_health_the_activate_answer_carried(
    tmp_path: Path, old_agent: bool
) -> None:
    """Every activated device has its smoke-test verdict, and (an agent that carries health
    with its activate answer) none of them cost a health call: every other verdict did."""
    async with harness(tmp_path, policy=ZERO_SOAK) as h:
        transport = Counting(h.controller.transport, old_agent=old_agent)
        dep = await run_to_complete(h, transport)
        events = await h.events(dep)
        state = fold(dep, events)
        verdicts = health_events_by_device(events, state)
        assert verdicts and all(smoke == 1 for _n, smoke in verdicts.values()), verdicts
        asked = {i: transport.by_device[("health", i)] for i in verdicts}
        # The old agent also gets its baseline asked apart (no health in its facts answer).
        expected = {i: n + 1 if old_agent else n - 1 for i, (n, _smoke) in verdicts.items()}
        assert asked == expected


async def test_an_agent_without_carried_health_is_asked_apart(tmp_path: Path) -> None:
    async with harness(tmp_path, policy=ZERO_SOAK) as h:
        transport = Counting(h.controller.transport, old_agent=True)
        dep = await run_to_complete(h, transport)
        events = await h.events(dep)
        folded = fold(dep, events)
        assert all(e.details["sample"] for e in events if e.action == "device.baseline")
        # Pre-flight, and CONFIRM's rollback copies (and the drill canary's pre-check).
        facts = {i: transport.by_device[("facts", i)] for i in folded.devices}
        assert facts == {i: 3 if i == folded.drill_device else 2 for i in folded.devices}
        state = await h.controller.decide(
            dep, Decision("rollback.requested", "alice", None, {"devices": []})
        )
        assert state.phase is Phase.ROLLED_BACK
        done = next(e for e in await h.events(dep) if e.action == "rollback.completed")
        assert sorted(done.details["recovered"]) == sorted(state.devices)


async def test_a_fleet_wide_rollback_takes_two_calls_and_checks_every_device(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, policy=ZERO_SOAK) as h:
        transport = Counting(h.controller.transport)
        dep = await run_to_complete(h, transport)
        transport.calls.clear()
        state = await h.controller.decide(
            dep, Decision("rollback.requested", "alice", None, {"devices": []})
        )
        assert state.phase is Phase.ROLLED_BACK
        n = len(state.devices)
        assert transport.calls == Counter({"facts": n, "rollback": n})
        events = await h.events(dep)
        done = next(e for e in events if e.action == "rollback.completed")
        assert sorted(done.details["recovered"]) == sorted(state.devices)
        recovered = {e.device_id for e in events if e.action == "health.recovered"}
        assert recovered == set(state.devices)
        assert all(h.fleet.device_state(i).current == "app-1.0.0-00000000" for i in state.devices)


async def test_logs_are_captured_from_failed_devices_before_their_rollback(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        transport = Counting(h.controller.transport)
        h.controller.transport = transport
        dep = await h.start()
        bad = (await h.controller.state(dep)).canaries[0]
        h.fleet.inject(f"crash-loop:device={bad},version=2.0.0")
        await h.controller.drive(dep)
        events = await h.events(dep)
        logs = [e.device_id for e in events if e.action == "device.logs_captured"]
        assert bad in logs
        first_logs = next(i for i, e in enumerate(events) if e.action == "device.logs_captured")
        first_rb = next(
            i
            for i, e in enumerate(events)
            if e.action == "device.rollback_requested" and e.device_id == bad
        )
        assert first_logs < first_rb


async def test_a_kept_fold_sees_a_decision_another_controller_wrote(tmp_path: Path) -> None:
    async with harness(tmp_path, policy=ZERO_SOAK) as h:
        dep = await h.start()
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL
        other = Controller(h.store, h.controller.transport, h.controller.config)
        await other.record_human(dep, "approval.granted", "alice")
        # The first controller kept its fold; it reads the approval from the log.
        assert (await h.controller.state(dep)).approval.value == "GRANTED"
        state = await h.controller.drive(dep)
        assert state.phase is Phase.COMPLETE
        assert state == fold(dep, await h.events(dep))


def test_gc_tuning_raises_the_young_threshold_and_never_enables_a_disabled_collector() -> None:
    import gc

    from fleetgate.engine.gctune import GEN0_THRESHOLD, tune_gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)
        gc.set_threshold(0, 10, 10)  # disabled by someone: left alone
        tune_gc()
        assert gc.get_threshold()[0] == 0
        gc.set_threshold(GEN0_THRESHOLD * 2, 10, 10)  # higher already: never lowered
        tune_gc()
        assert gc.get_threshold()[0] == GEN0_THRESHOLD * 2
    finally:
        gc.set_threshold(*saved)


async def test_a_device_that_goes_dark_once_its_release_runs_still_fails(tmp_path: Path) -> None:
    """Its activate answer (and the health sample in it) arrived; the smoke test judges that
    sample, and the commit that follows meets the dead link: the device is failed and never
    counted healthy on the release, exactly as when the smoke test asked the device itself."""
    async with harness(tmp_path, policy=ZERO_SOAK) as h:
        dep = await h.start()
        dark = (await h.controller.state(dep)).canaries[0]
        h.fleet.inject(f"unreachable:version=2.0.0,device={dark}")
        state = await h.controller.drive(dep)
        events = await h.events(dep)
        mine = [e.action for e in events if e.device_id == dark]
        assert "device.activated" in mine and "device.commit_failed" in mine, mine
        assert "device.committed" not in mine
        # Failed, then (a canary failed) the canaries are rolled back: this one cannot be reached.
        assert state.devices[dark] is D.ROLLBACK_FAILED, state.devices[dark]
        assert state.canary_verdict == "FAIL"


def test_a_drive_freezes_the_heap_it_starts_with_and_gives_it_back() -> None:
    """Objects alive when a drive starts are exempt from collections during it (a full
    collection does not rescan a fleet-sized heap); afterwards they are collectable again, so
    a reference cycle among them is freed (engine/gctune.py)."""
    import gc
    import weakref

    from fleetgate.engine.gctune import frozen_heap

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: not collected during the drive
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # given back: the cycle is freed


def test_a_failed_drive_still_unfreezes_the_heap() -> None:
    import gc

    from fleetgate.engine.gctune import frozen_heap

    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("drive failed")
    assert gc.get_freeze_count() == 0


async def test_the_driver_judges_against_the_baselines_a_resumed_controller_folds(
    tmp_path: Path,
) -> None:
    """The driving controller keeps one baseline per device, shared with its kept fold, and it
    is the sample the log holds: a controller that folds the log afresh has the same ones."""
    async with harness(tmp_path, policy=ZERO_SOAK) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        await h.controller.record_human(dep, "approval.granted", "alice")
        assert (await h.controller.drive(dep)).phase is Phase.COMPLETE
        kept = h.controller.views.take(dep)
        assert kept is not None
        fresh = await Controller(h.store, h.controller.transport, h.controller.config)._view(dep)
        assert set(kept.baselines) == set(fresh.state.order)
        assert kept.baselines == fresh.baselines
