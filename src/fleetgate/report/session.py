"""The deployment session report, computed from the deployment's events alone.

``build_report(deployment_id, events)`` reads the audit log's events (``Event`` or
``StoredEvent``, in log order; the vocabulary is ``docs/events.md``) and returns one JSON-safe
document with the spec's session template as data: ``prepare``, ``canary``, ``verify`` (every
canary round, the CANARY HEALTH REPORT boxes), ``approval``, ``rollout``, ``rollbacks``,
``confirm`` (with ``set_aside``: every device set aside and why), ``devices``, ``state`` (the
``<fleet-deploy-state>`` fields) and ``timeline``. ``render_report_md`` (in
``report.session_md``, re-exported here) renders it as the spec's markdown. No store, no device,
no clock: the same events always give the same report.

Modules: ``session_log`` (normalise + fold + index the events), ``session_phases`` (PREPARE,
CANARY, approval), ``session_verify`` (VERIFY: canary rounds, the boxes), ``session_rollout``
(waves, rollbacks), ``session_confirm`` (CONFIRM accounting, devices set aside), ``health_box``
(the CANARY HEALTH REPORT box), ``canary_evidence`` and ``sparkline`` (canary vs control),
``session_md`` (markdown). ``deploy report`` calls ``build_report``
then ``render_report_md`` or ``json.dumps``.

Invariants:

- Details are read in their canonical JSON form (what the store keeps), so a report built from
  in-memory ``Event``\\ s and one built from the ``StoredEvent``\\ s read back from the store are
  identical, key order included.
- Device statuses, the state block and the CONFIRM counts come from ``core.machine`` folding the
  same events (``fold``), so they agree with ``deploy status``. An event the machine refuses
  (it never should be in a log) is left out of every section and named in ``warnings``.
- CONFIRM accounts for every device of the inventory: the four spec rows plus, only when not
  zero, Deployed (degraded) / Deployed (not yet checked) / Staged (not activated) / Failed (on
  the new release) / Failed (not deployed) / Excluded (cell not proven by a canary) / Rolled
  back / Rollback failed (manual intervention) / Pending (not reached). Counts sum to
  ``fleet_total``; "Deployed (healthy)" counts only HEALTHY devices, which run the release
  (invariant 10). ``confirm.set_aside`` lists every quarantined, skipped, excluded, failed,
  failed-to-deploy and rollback-failed device with its status and the fold's reason.
- A FAIL is never hidden (invariant 11): every canary round is in ``verify.rounds`` with its own
  verdict; the top-level verdict line names the round and every earlier FAIL and human decision;
  a canary's box carries its own verdict (FAIL when its round failed it, PASS only when its round
  passed, NOT PROVEN when its round failed for other canaries) — never FAILED with PASS.

Readings of ``docs/events.md`` where it leaves a choice (kept here so the engine can match):

- PREPARE's Checksum names both digests: the bundle file's (``deployment.created``
  ``bundle_sha256``, what ``artifact build`` printed) and the payload's (``sha256``, what the
  signed manifest binds and devices fetch). Older logs without ``bundle_sha256`` say so.

- Canary table: Transfer is OK on ``device.staged``, FAIL on ``device.deploy_failed`` step
  ``stage``; Deploy OK on ``device.activated``, FAIL on step ``activate``; Smoke Test comes from
  ``device.health`` round ``smoke`` (PASS unless its status is ``failed``) or a ``deploy_failed``
  step ``smoke``; ``-`` means not reached. Status is the device's current status (so a canary
  rolled back later reads ROLLED BACK; QUARANTINED, FAILED (NOT DEPLOYED) and ROLLBACK FAILED
  can appear too). Replacement canaries (``canary.replaced.replacements``) are rows of stage 0
  with the round they joined and ``why``.
- Canary analysis (issue 11): a round's ``canary.controls``, stage-0 ``soak.sampled`` ticks of
  its soak and ``canary.verdict.analysis`` become ``verify.rounds[i].analysis`` (per canary
  and metric: medians, effect and interval, tolerance, verdict; a sparkline SVG of the metric
  that decided); ``report.canary_evidence`` says how ratio and additive metrics are read.
  ``approval`` carries the ``verdict`` it was asked on and ``accept_inconclusive``.
- Canary rounds: round N's evidence is the stage-0 events after the (N-1)th ``canary.replaced``
  up to round N's ``canary.verdict``; its canaries are round N-1's minus ``retired`` plus
  ``replacements``. The decision between rounds is the first ``deployment.resumed`` after a FAIL
  verdict (its actor; ``canary_failure`` read as ``replace`` when absent, as the machine does).
- VERIFY rows and boxes use, per canary and round, the last stage-0 ``device.health`` of round
  ``post-soak``, else its latest stage-0 sample in the round; ``verify.rows`` and the boxes hold
  each canary's last round. Its baseline is the event's ``baseline``, else the device's stage-0
  ``device.baseline``. A box's minimum disk is the pre-flight's ``disk_needed_mb``, else the
  plan's ``disk_mb``; the temperature threshold is ``policy.health.temperature_c_max`` (85 C by
  default). A box's Status is the round's health status, "(now X)" when the device's status
  changed since; Reason is the verdict's reasons naming the device, else ``state.reasons``.
- Wave health check: CONTINUE -> PASS; QUARANTINE_AND_CONTINUE -> FAIL (the decision line says
  the failures were isolated and quarantined); PAUSE_FOR_HUMAN -> PAUSED;
  ROLLBACK_WAVE_AND_HALT -> ROLLED BACK; no ``wave.evaluated`` -> PENDING while that wave is
  under way, else NOT RUN (a pre-flight halt, a rollback request). Devices failed = the union of
  the wave's ``stage.deployed.failed``, its devices' ``device.deploy_failed`` (steps stage and
  activate; a CONFIRM-step one is not a failure of the wave's deployment) and its
  ``wave.evaluated.failed`` (which, as the engine checks ALL deployed devices, may name devices
  of earlier waves), with ``wave.evaluated.reasons`` (else ``state.reasons``). Devices targeted
  = ``wave.evaluated.targeted`` when recorded, else the wave's devices; devices attempted =
  ``wave.evaluated.attempted``, else the wave's devices not SKIPPED or EXCLUDED (ADR 0020); the
  failure rate is ``wave.evaluated.rate``, else the wave's own failures over attempted.
  Devices skipped = the ``stage.deployed.skipped`` ids, or without ``stage.deployed`` (a
  pre-flight halt) the wave's devices left unreachable. "% of fleet" is the plan's
  ``cumulative_percent`` for the wave (the spec's "Wave 1 (25% of fleet)"); ``share_percent`` is
  the wave's own share of ``fleet_total``.
- CONFIRM vs ``confirm.completed.counts``: compared with the device statuses at that event
  (``SessionLog.at_confirm``). The engine's ``skipped`` also counts devices never reached
  (PENDING), its ``failed`` FAILED + DEPLOY_FAILED + ROLLBACK_FAILED; the comparison allows for
  that, the table keeps them apart. ``registry.quarantined`` devices are listed as put on the
  registry's quarantine list.
- Rollbacks: one entry per ``rollback.requested``/``rollback.started`` … ``rollback.completed``
  window; ``device.rolled_back`` events outside any window are the canary stage's rollback
  drill. ``devices`` empty in ``rollback.started`` means every deployed device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fleetgate.core.events import Event, StoredEvent
from fleetgate.core.state import render_state_block
from fleetgate.errors import InputError
from fleetgate.report.session_confirm import confirm_section
from fleetgate.report.session_log import SessionLog, device_info, display_status
from fleetgate.report.session_md import render_report_md
from fleetgate.report.session_phases import approval_section, canary_section, prepare_section
from fleetgate.report.session_rollout import rollback_sections, rollout_section
from fleetgate.report.session_verify import verify_section

__all__ = ["build_report", "render_report_md"]


def _state_fields(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.splitlines()[1:-1]:
        key, _, value = line.partition(": ")
        out[key] = value
    return out


def _timeline(log: SessionLog) -> dict[str, Any]:
    if not log.events:
        return {"first_ts": None, "last_ts": None, "duration_s": None, "events": 0, "phases": []}
    first, last = log.events[0].ts, log.events[-1].ts
    try:
        duration: float | None = (
            datetime.fromisoformat(last) - datetime.fromisoformat(first)
        ).total_seconds()
    except ValueError:
        duration = None
    return {
        "first_ts": first,
        "last_ts": last,
        "duration_s": duration,
        "events": len(log.events),
        "phases": log.transitions,
    }


def build_report(deployment_id: str, events: Sequence[StoredEvent | Event]) -> dict[str, Any]:
    """The whole session as one JSON-safe dict, from the deployment's events alone.

    Raises ``InputError`` when the events hold no ``deployment.created`` for ``deployment_id``.
    """
    log = SessionLog.load(deployment_id, events)
    created = log.first("deployment.created")
    if created is None:
        raise InputError(f"deployment {deployment_id!r}: no deployment.created event in the log")
    state = log.state
    info = device_info(created.details)
    prepare = prepare_section(log, created)
    plan = prepare["plan"]
    stages = state.stages
    # Devices excluded after a canary FAIL leave their wave's stage but stay targeted.
    placed: dict[str, int | None] = {i: n for n, st in enumerate(stages) for i in st}
    placed.update({i: None for i in state.order if i not in placed})
    targeted = len(state.devices)
    groups = sorted({str(g) for g in plan.get("groups", ())}) or sorted(
        {info[i]["group"] for st in stages for i in st if info.get(i, {}).get("group")}
    )
    waves = rollout_section(log, plan, info)
    confirm = confirm_section(log)
    block = render_state_block(state)
    report: dict[str, Any] = {
        "deployment_id": deployment_id,
        "artifact": state.artifact,
        "name": plan["artifact"]["name"],
        "version": plan["artifact"]["version"],
        "sha256": state.sha256,
        "bundle_sha256": plan["artifact"].get("bundle_sha256"),
        "fleet_total": state.fleet_total,
        "targeted": targeted,
        "groups": groups,
        "strategy": {
            "summary": "canary -> staged rollout",
            "canaries": len(state.canaries),
            "waves": len(waves),
            "cumulative_percent": [w["percent"] for w in waves],
        },
        "phase": state.phase.value,
        "result": confirm["result"],
        "prepare": prepare,
        "canary": canary_section(log, info),
        "verify": verify_section(log, info, plan, created.details),
        "approval": approval_section(log),
        "rollout": waves,
        "rollbacks": rollback_sections(log),
        "confirm": confirm,
        "devices": [
            {
                "id": dev,
                "type": info.get(dev, {}).get("hardware", "?"),
                "group": info.get(dev, {}).get("group", "?"),
                "stage": n,
                "status": display_status(state.devices[dev]),
            }
            for dev, n in placed.items()
        ],
        "state": _state_fields(block),
        "state_block": block,
        "timeline": _timeline(log),
        "warnings": list(log.warnings) + confirm.pop("warnings"),
    }
    # JSON-safe by construction; the round trip proves it (and turns tuples into lists).
    return dict(json.loads(json.dumps(report, allow_nan=False)))
