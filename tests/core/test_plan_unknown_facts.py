"""A device whose facts are unknown (an Ansible entry before first contact) or that is still
pending (self-enrolled, not accepted) is never planned, and the plan says why."""

from __future__ import annotations

from dataclasses import replace

from test_plan import M, dev

from fleetgate.core.model import DeviceState
from fleetgate.core.plan import plan_deployment
from fleetgate.core.plan_doc import plan_to_dict
from fleetgate.core.policy import Policy
from fleetgate.registry.selector import parse_selector


def _unknown(i: int, group: str = "plant-a"):  # type: ignore[no-untyped-def]
    return replace(dev(i, group=group), hardware=None, arch=None, resources=None)


def test_facts_unknown_device_is_excluded_with_the_reason_never_guessed() -> None:
    fleet = [dev(i) for i in range(10)] + [_unknown(10)]
    plan = plan_deployment(fleet, M, Policy())
    assert "d0010" not in {d.id for d in plan.targeted}
    (excl,) = plan.excluded
    assert excl.device.id == "d0010"
    assert excl.reason.startswith("facts unknown (hardware, arch, ram_mb, disk_mb)")
    doc = plan_to_dict(plan, Policy())
    assert doc["excluded"] == [{"id": "d0010", "reason": excl.reason}]
    assert all(c["hardware"] for c in doc["compatibility"])  # no cell for an unknown device


def test_a_selection_on_a_fact_never_matches_an_unknown_one_and_says_so() -> None:
    fleet = [dev(i) for i in range(10)] + [_unknown(10), _unknown(11)]
    chosen = parse_selector("hardware=rpi4")
    plan = plan_deployment(fleet, M, Policy(), chosen.matches)
    assert {d.id for d in plan.not_targeted} == {"d0010", "d0011"}
    assert any("2 device(s) not selected whose facts are unknown" in n for n in plan.notes)
    # A negated term matches the unknown device (absent value), which is then excluded.
    plan = plan_deployment(fleet, M, Policy(), parse_selector("hardware!=orin").matches)
    assert {e.device.id for e in plan.excluded} == {"d0010", "d0011"}


def test_pending_device_is_never_targeted() -> None:
    fleet = [dev(i) for i in range(5)] + [dev(5, state=DeviceState.PENDING)]
    plan = plan_deployment(fleet, M, Policy())
    assert [(e.device.id, e.reason) for e in plan.excluded] == [("d0005", "state pending")]
    assert "d0005" not in {d.id for s in plan.stages() for d in s}


def test_only_unknown_devices_means_no_plan() -> None:
    plan = plan_deployment([_unknown(1), _unknown(2)], M, Policy())
    assert plan.blockers and not plan.targeted
