from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.core.events import Event
from fleetgate.core.machine import (
    Confirm,
    EvaluateWave,
    ReplaceCanaries,
    Rollback,
    RunStage,
    Stop,
    VerifyCanary,
    WaitForHuman,
    fold,
    next_effects,
    step,
)
from fleetgate.core.state import DeploymentState, DeviceStatus, Phase, render_state_block
from fleetgate.errors import IllegalTransition

STAGES = [["c1", "c2"], ["w1a", "w1b"], ["w2a", "w2b", "w2c"]]


def ev(name: str, device: str | None = None, /, actor: str = "fleetgate", **details: Any) -> Event:
    return Event(
        ts="2026-11-26T09:00:00+00:00",
        deployment_id="dep-1",
        action=name,
        device_id=device,
        actor=actor,
        details=details,
    )


def created() -> Event:
    return ev(
        "deployment.created",
        stages=STAGES,
        artifact="vision v2.4.1",
        fleet_total=10,
        sha256="ab" * 32,
    )


def deploy_stage(n: int) -> list[Event]:
    out: list[Event] = []
    for d in STAGES[n]:
        out += [ev("device.staged", d), ev("device.activated", d)]
    return [*out, ev("stage.deployed", stage=n)]


def healthy(ids: list[str]) -> list[Event]:
    return [ev("device.health", d, status="healthy") for d in ids]


def run(events: list[Event]) -> tuple[DeploymentState, list[Any]]:
    s = DeploymentState.empty("dep-1")
    effects: list[Any] = []
    for e in events:
        s, effects = step(s, e)
    return s, effects


def happy_path() -> list[Event]:
    return [
        created(),
        ev("prepare.passed"),
        *deploy_stage(0),
        *healthy(STAGES[0]),
        ev("canary.verdict", verdict="PASS"),
        ev("approval.granted", actor="alice"),
        *deploy_stage(1),
        *healthy(STAGES[0] + STAGES[1]),
        ev("wave.evaluated", stage=1, action="CONTINUE", rate=0.0),
        *deploy_stage(2),
        *healthy(STAGES[0] + STAGES[1] + STAGES[2]),
        ev("wave.evaluated", stage=2, action="CONTINUE", rate=0.0),
        ev("confirm.completed", result="COMPLETE"),
    ]


def test_happy_path_effects_in_order() -> None:
    s = DeploymentState.empty("dep-1")
    seen: list[str] = []
    for e in happy_path():
        s, effects = step(s, e)
        seen.append(type(effects[0]).__name__)
    assert s.phase is Phase.COMPLETE
    # The effects the engine is asked for, deduplicated in order.
    order = [x for i, x in enumerate(seen) if i == 0 or seen[i - 1] != x]
    assert order == [
        "Prepare",
        "RunStage",
        "VerifyCanary",
        "WaitForHuman",
        "RunStage",
        "EvaluateWave",
        "RunStage",
        "EvaluateWave",
        "Confirm",
        "Stop",
    ]


def test_fold_equals_live_state_at_every_prefix() -> None:
    events = happy_path()
    live = DeploymentState.empty("dep-1")
    for i, e in enumerate(events):
        live, _ = step(live, e)
        assert fold("dep-1", events[: i + 1]) == live


def test_approval_needs_pass_verdict_and_a_named_human() -> None:
    base = [created(), ev("prepare.passed"), *deploy_stage(0)]
    with pytest.raises(IllegalTransition):
        run([*base, ev("approval.granted", actor="alice")])  # still VERIFY
    passed = [*base, ev("canary.verdict", verdict="PASS")]
    with pytest.raises(IllegalTransition, match="named human"):
        run([*passed, ev("approval.granted", actor="fleetgate")])
    s, effects = run([*passed, ev("approval.granted", actor="alice")])
    assert s.approval.value == "GRANTED"
    assert effects == [RunStage(1, ("w1a", "w1b"))]


def test_canary_fail_all_rolls_back_then_aborts() -> None:
    s, effects = run(
        [
            created(),
            ev("prepare.passed"),
            *deploy_stage(0),
            ev(
                "canary.verdict",
                verdict="FAIL",
                failed=["c1", "c2"],
                all_failed=True,
                reasons=["c1: app down"],
            ),
        ]
    )
    assert s.phase is Phase.ROLLING_BACK
    assert effects == [Rollback(("c1", "c2"), s.halt_reason)]
    s, effects = run(
        [
            created(),
            ev("prepare.passed"),
            *deploy_stage(0),
            ev("canary.verdict", verdict="FAIL", failed=["c1", "c2"], all_failed=True),
            ev("device.rolled_back", "c1"),
            ev("device.rolled_back", "c2"),
            ev("rollback.completed"),
        ]
    )
    assert s.phase is Phase.ABORTED
    assert effects == [Stop(Phase.ABORTED)]
    # No non-canary device was ever touched.
    assert all(s.devices[d] is DeviceStatus.PENDING for d in STAGES[1] + STAGES[2])


def partial_canary_fail() -> list[Event]:
    return [
        created(),
        ev("prepare.passed"),
        *deploy_stage(0),
        ev("canary.verdict", verdict="FAIL", failed=["c2"], all_failed=False),
        ev("device.rolled_back", "c2"),
        ev("rollback.completed"),
    ]


def test_some_canaries_fail_asks_a_human_and_never_reverifies_into_a_pass() -> None:
    """Invariant 11 (issue 7.2): resume after a partial FAIL used to re-verify only c1 and
    record PASS, rolling out to c2's cell unproven. Now the failed canary is quarantined, and
    the resume leads to a replacement canary round, not to a verdict on what is left."""
    events = partial_canary_fail()
    s, effects = run(events)
    assert s.phase is Phase.HALTED and isinstance(effects[0], WaitForHuman)
    assert s.devices["c2"] is DeviceStatus.QUARANTINED
    assert s.canary_verdict == "FAIL"
    s, effects = run([*events, ev("deployment.resumed", actor="bob")])
    assert s.phase is Phase.VERIFY and s.canary_verdict == "FAIL"
    assert effects == [ReplaceCanaries("replace", ("c2",))]
    # A verdict recorded now (the old path) is refused outright.
    with pytest.raises(IllegalTransition):
        run([*events, ev("deployment.resumed", actor="bob"), ev("canary.verdict", verdict="PASS")])


def test_replacement_canary_goes_through_the_whole_canary_stage() -> None:
    events = [
        *partial_canary_fail(),
        ev("deployment.resumed", actor="bob", canary_failure="replace"),
        ev("canary.replaced", retired=["c2"], replacements=["w1a"], excluded=["w2c"]),
    ]
    s, effects = run(events)
    assert s.phase is Phase.CANARY and s.canary_round == 2 and s.canary_verdict == "PENDING"
    assert s.stages[0] == ("c1", "c2", "w1a") and s.stages[1] == ("w1b",)
    assert s.stages[2] == ("w2a", "w2b")
    assert s.devices["w2c"] is DeviceStatus.EXCLUDED
    assert effects == [RunStage(0, ("c1", "c2", "w1a"))]
    s, effects = run([*events, ev("device.staged", "w1a"), ev("device.activated", "w1a")])
    s, effects = run([*events, *deploy_stage_ids(["w1a"], 0)])
    assert s.phase is Phase.VERIFY and effects == [VerifyCanary(("c1", "w1a"))]
    s, _ = run([*events, *deploy_stage_ids(["w1a"], 0), ev("canary.verdict", verdict="PASS")])
    assert s.phase is Phase.AWAITING_APPROVAL
    assert [h["verdict"] for h in s.canary_history] == ["FAIL", "PASS"]


def deploy_stage_ids(ids: list[str], n: int) -> list[Event]:
    out: list[Event] = []
    for d in ids:
        out += [ev("device.staged", d), ev("device.activated", d)]
    return [*out, ev("stage.deployed", stage=n)]


def test_canary_replaced_refuses_devices_already_touched_or_without_a_decision() -> None:
    with pytest.raises(IllegalTransition):
        run([*partial_canary_fail(), ev("canary.replaced", replacements=["w1a"])])
    resumed = [*partial_canary_fail(), ev("deployment.resumed", actor="bob")]
    with pytest.raises(IllegalTransition):
        run([*resumed, ev("canary.replaced", replacements=["c1"])])  # a canary, not a wave device
    with pytest.raises(IllegalTransition):
        run([*partial_canary_fail(), ev("deployment.resumed", actor="bob", canary_failure="yolo")])


def test_a_failed_stage_is_not_deployed_and_a_failed_start_stays_failed() -> None:
    """Invariant 10 (issue 7.1): a stage failure leaves the old release running; a later
    healthy sample must not turn a failed device into a deployed, healthy one."""
    events = [
        created(),
        ev("prepare.passed"),
        ev("device.deploy_failed", "c1", step="stage", error="507 insufficient-disk"),
        ev("device.staged", "c2"),
        ev("device.activated", "c2"),
        ev("device.deploy_failed", "c2", step="activate", error="start-failed"),
        ev("device.health", "c1", status="healthy"),
        ev("device.health", "c2", status="healthy"),
    ]
    s, _ = run(events)
    assert s.devices["c1"] is DeviceStatus.DEPLOY_FAILED
    assert not s.devices["c1"].on_new_release
    assert s.devices["c2"] is DeviceStatus.FAILED
    assert "insufficient-disk" in s.reasons["c1"]
    assert "deployed_count: 1" in render_state_block(s)


def test_wave_matrix_outcomes() -> None:
    base = [
        created(),
        ev("prepare.passed"),
        *deploy_stage(0),
        ev("canary.verdict", verdict="PASS"),
        ev("approval.granted", actor="alice"),
        *deploy_stage(1),
    ]
    # < 5 %: quarantine (roll back the failed device, mark it quarantined), continue.
    s, eff = run(
        [
            *base,
            ev(
                "wave.evaluated",
                stage=1,
                action="QUARANTINE_AND_CONTINUE",
                failed=["w1a"],
                rate=0.04,
            ),
        ]
    )
    assert eff == [Rollback(("w1a",), "quarantine: w1a: failed")]  # the reason names why
    s, eff = run(
        [
            *base,
            ev(
                "wave.evaluated",
                stage=1,
                action="QUARANTINE_AND_CONTINUE",
                failed=["w1a"],
                rate=0.04,
            ),
            ev("device.rolled_back", "w1a"),
            ev("rollback.completed"),
        ]
    )
    assert s.devices["w1a"] is DeviceStatus.QUARANTINED
    assert eff == [RunStage(2, ("w2a", "w2b", "w2c"))]
    # 5–20 %: pause for a human; resume quarantines the failed, then continues.
    s, eff = run(
        [*base, ev("wave.evaluated", stage=1, action="PAUSE_FOR_HUMAN", failed=["w1a"], rate=0.1)]
    )
    assert s.phase is Phase.HALTED
    s, eff = run(
        [
            *base,
            ev("wave.evaluated", stage=1, action="PAUSE_FOR_HUMAN", failed=["w1a"], rate=0.1),
            ev("deployment.resumed", actor="bob"),
        ]
    )
    assert s.phase is Phase.ROLLING_BACK and eff[0] == Rollback(("w1a",), "quarantine: w1a: failed")
    # > 20 %: roll back the wave, halt.
    s, eff = run(
        [
            *base,
            ev(
                "wave.evaluated",
                stage=1,
                action="ROLLBACK_WAVE_AND_HALT",
                failed=["w1a", "w1b"],
                rollback=["w1a", "w1b"],
                scope="WAVE",
                rate=1.0,
                reason="100 % failed",
            ),
        ]
    )
    assert s.phase is Phase.ROLLING_BACK
    s, eff = run(
        [
            *base,
            ev(
                "wave.evaluated",
                stage=1,
                action="ROLLBACK_WAVE_AND_HALT",
                failed=["w1a", "w1b"],
                rollback=["w1a", "w1b"],
                scope="WAVE",
                rate=1.0,
                reason="100 % failed",
            ),
            ev("device.rolled_back", "w1a"),
            ev("device.rolled_back", "w1b"),
            ev("rollback.completed"),
        ]
    )
    assert s.phase is Phase.HALTED and "100 % failed" in s.halt_reason
    assert s.devices["c1"] is DeviceStatus.DEPLOYED  # canaries were not in the scope


def test_rollback_failure_stops_everything_until_recovered() -> None:
    base = [
        created(),
        ev("prepare.passed"),
        *deploy_stage(0),
        ev("canary.verdict", verdict="FAIL", failed=["c1", "c2"], all_failed=False),
        ev("device.rolled_back", "c1"),
        ev("device.rollback_failed", "c2"),
        ev("rollback.completed"),
    ]
    s, _ = run(base)
    assert s.phase is Phase.HALTED and s.manual_intervention == ("c2",)
    assert "rollback_available: false" in render_state_block(s)
    with pytest.raises(IllegalTransition, match="rollback failure is unresolved"):
        run([*base, ev("deployment.resumed", actor="bob")])
    s, _ = run(
        [*base, ev("device.recovered", "c2", actor="bob"), ev("deployment.resumed", actor="bob")]
    )
    assert s.phase is Phase.VERIFY


def test_terminal_phases_refuse_further_deployment() -> None:
    s, _ = run(happy_path())
    with pytest.raises(IllegalTransition):
        step(s, ev("approval.granted", actor="x"))
    s2, eff = step(s, ev("rollback.requested", actor="ops"))
    assert s2.phase is Phase.ROLLING_BACK and len(eff[0].device_ids) == 7  # type: ignore[union-attr]


def test_unknown_and_out_of_plan_events_are_refused() -> None:
    with pytest.raises(IllegalTransition):
        run([created(), ev("device.staged", "stranger")])
    with pytest.raises(IllegalTransition):
        run([created(), ev("bogus.thing")])
    with pytest.raises(IllegalTransition):
        run([ev("prepare.passed")])


def test_state_block_has_the_specs_field_names() -> None:
    s, _ = run(happy_path()[:12])
    block = render_state_block(s)
    names = [line.split(":")[0] for line in block.splitlines()[1:-1]]
    assert names == [
        "phase",
        "artifact",
        "fleet_total",
        "canary_count",
        "canary_healthy",
        "deployed_count",
        "deployed_healthy",
        "deployed_degraded",
        "skipped",
        "quarantined",
        "rollback_available",
        "canary_verdict",
        "human_approval",
        "current_wave",
        "wave_failure_rate",
        "last_action",
        "next_action",
        "blockers",
    ]
    assert "human_approval: GRANTED" in block and "canary_healthy: 2" in block


def test_effects_after_resume_are_a_function_of_the_folded_state() -> None:
    events = happy_path()
    for cut in range(1, len(events)):
        s = fold("dep-1", events[:cut])
        live, eff = run(events[:cut])
        assert next_effects(s) == eff
        assert live == s
    assert isinstance(next_effects(fold("dep-1", events[:-1]))[0], Confirm)
    assert isinstance(next_effects(fold("dep-1", events[:-5]))[0], EvaluateWave)


# -- invariant 4 as a property: random event streams never reach a fleet stage without a
#    recorded human approval that followed a PASS canary verdict.
ANY_EVENT = st.one_of(
    st.sampled_from(
        [
            ev("prepare.passed"),
            ev("prepare.failed"),
            ev("stage.deployed", stage=0),
            ev("stage.deployed", stage=1),
            ev("canary.verdict", verdict="PASS"),
            ev("canary.verdict", verdict="FAIL", failed=["c1"], all_failed=False),
            ev("approval.granted", actor="alice"),
            ev("approval.granted", actor="fleetgate"),
            ev("approval.rejected", actor="alice"),
            ev("wave.evaluated", stage=1, action="CONTINUE"),
            ev("wave.evaluated", stage=1, action="PAUSE_FOR_HUMAN", failed=["w1a"]),
            ev("deployment.resumed", actor="bob"),
            ev("deployment.halted", reason="x"),
            ev("rollback.completed"),
            ev("rollback.requested", actor="ops"),
            ev("confirm.completed", result="COMPLETE"),
        ]
    ),
    st.builds(
        lambda a, d: ev(a, d),
        st.sampled_from(
            [
                "device.activated",
                "device.health",
                "device.rolled_back",
                "device.rollback_failed",
                "device.recovered",
            ]
        ),
        st.sampled_from([x for s in STAGES for x in s]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ANY_EVENT, max_size=40))
def test_no_fleet_stage_without_human_approval_after_pass(events: list[Event]) -> None:
    s = DeploymentState.empty("dep-1")
    s, _ = step(s, created())
    approved_after_pass = False
    for e in events:
        if e.action == "device.health":
            e = ev("device.health", e.device_id, status="healthy")
        try:
            s, effects = step(s, e)
        except (IllegalTransition, KeyError):
            continue
        if e.action == "approval.granted":
            assert s.canary_verdict == "PASS"
            approved_after_pass = True
        for eff in effects:
            if isinstance(eff, RunStage | EvaluateWave) and eff.stage >= 1:
                assert approved_after_pass
        if s.phase in (Phase.ROLLOUT, Phase.CONFIRM, Phase.COMPLETE):
            assert approved_after_pass
