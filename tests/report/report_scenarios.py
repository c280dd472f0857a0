"""Hand-built event logs for the session report tests, in the vocabulary of docs/events.md.

A 12-device inventory (2 not targeted), two hardware types across two groups:
canaries orin-a-01 + rpi-b-01, wave 1 (3 devices, 50 % of the target fleet), wave 2 (5, 100 %).
Each scenario writes the events the engine is specified to write, in order, with a clock that
advances a few seconds per event, so folds, reports and timestamps are all deterministic.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from fleetgate.core.events import Event

DEP = "dep-7f3a"
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)
FLEET_TOTAL = 12
SHA = "5e" * 32  # the payload's digest
BUNDLE_SHA = "b1" * 32  # the .fgb file's, as `artifact build` prints it
CANARIES = ["orin-a-01", "rpi-b-01"]
WAVE1 = ["orin-a-02", "rpi-b-02", "rpi-b-03"]
WAVE2 = ["orin-a-03", "orin-a-04", "rpi-b-04", "rpi-b-05", "orin-a-05"]
STAGES = [CANARIES, WAVE1, WAVE2]
SOAK = 900


def hw(dev: str) -> str:
    return "jetson-orin-nano" if dev.startswith("orin") else "rpi4"


def group(dev: str) -> str:
    return "plant-a" if dev.startswith("orin") else "plant-b"


def arch(dev: str) -> str:
    return "arm64"


def target(dev: str) -> dict[str, Any]:
    return {
        "id": dev,
        "hardware": hw(dev),
        "arch": arch(dev),
        "group": group(dev),
        "address": "http://127.0.0.1:7601",
        "token_env": "FLEETGATE_TOKEN",
        "resources": {"ram_mb": 8192 if hw(dev) != "rpi4" else 4096, "disk_mb": 60000, "gpu": True},
        "software": {"os": "ubuntu-22.04"},
        "monitoring": "high",
        "critical": False,
        "state": "active",
    }


def plan_dict() -> dict[str, Any]:
    """What ``report.prepare.plan_to_dict`` records: the same keys, written by hand."""
    targeted = [d for st in STAGES for d in st]
    cells: dict[tuple[str, str, str], int] = {}
    for d in targeted:
        key = (group(d), hw(d), arch(d))
        cells[key] = cells.get(key, 0) + 1
    return {
        "artifact": {
            "name": "vision",
            "version": "2.4.1",
            "kind": "bundle",
            "sha256": SHA,
            "size": 5_242_880,
            "disk_mb": 300,
            "manifest": {"artifact": {"name": "vision", "version": "2.4.1"}},
        },
        "distribution": None,
        "fleet_total": FLEET_TOTAL,
        "targeted": len(targeted),
        "groups": ["plant-a", "plant-b"],
        "device_groups": [
            {"group": g, "hardware": h, "arch": a, "count": n}
            for (g, h, a), n in sorted(cells.items())
        ],
        "canaries": [
            {"id": d, "hardware": hw(d), "group": group(d), "reason": f"covers {hw(d)}, {group(d)}"}
            for d in CANARIES
        ],
        "waves": [
            {
                "number": n,
                "devices": list(st),
                "count": len(st),
                "cumulative_percent": pct,
                "by_hardware": {"rpi4": sum(hw(d) == "rpi4" for d in st), "jetson-orin-nano": 1},
                "by_group": {"plant-b": 1, "plant-a": 1},
            }
            for n, st, pct in ((1, WAVE1, 50.0), (2, WAVE2, 100.0))
        ],
        "compatibility": [
            {
                "group": g,
                "hardware": h,
                "arch": a,
                "count": n,
                "compatible": n,
                "status": "PASS",
                "reasons": [],
            }
            for (g, h, a), n in sorted(cells.items())
        ],
        "excluded": [{"id": "gw-c-01", "reason": "arch x86_64 not in [arm64]"}],
        "not_targeted": 1,
        "uncovered": [],
        "notes": [],
        "blockers": [],
        "policy": {"canary_percent": 2.0, "waves": [50.0, 100.0]},
    }


def sample(dev: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "device_id": dev,
        "app_up": True,
        "latency_ms": 20.0,
        "error_rate": 0.002,
        "cpu_percent": 35.5,
        "mem_used_mb": 1800.0,
        "mem_total_mb": 8192.0 if hw(dev) != "rpi4" else 4096.0,
        "disk_free_mb": 52000.0,
        "gpu_percent": 20.0 if hw(dev) != "rpi4" else None,
        "temperature_c": 55.0,
        "restarts": 0,
        "crash_loop": False,
        "release": "vision-2.4.1",
    }
    base.update(over)
    return base


def baseline(dev: str) -> dict[str, Any]:
    return sample(
        dev,
        latency_ms=18.0,
        error_rate=0.001,
        cpu_percent=30.0,
        mem_used_mb=1700.0,
        release="vision-2.4.0",
    )


class Log:
    """Appends events with an advancing clock."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.t = T0

    def add(
        self,
        name: str,
        device: str | None = None,
        /,
        *,
        actor: str = "fleetgate",
        outcome: str = "ok",
        dt: float = 2.0,
        **details: Any,
    ) -> None:
        self.t += timedelta(seconds=dt)
        self.events.append(
            Event(
                ts=self.t.isoformat(),
                deployment_id=DEP,
                action=name,
                outcome=outcome,
                device_id=device,
                actor=actor,
                details=details,
            )
        )

    # -- building blocks ---------------------------------------------------------------------
    def created(self, *, with_plan: bool = True, with_bundle_sha: bool = True) -> None:
        extra: dict[str, Any] = {"plan": plan_dict()} if with_plan else {}
        if with_bundle_sha:
            extra["bundle_sha256"] = BUNDLE_SHA
        self.add(
            "deployment.created",
            actor="alice",
            stages=STAGES,
            artifact="vision v2.4.1",
            sha256=SHA,
            fleet_total=FLEET_TOTAL,
            policy={"health": {"temperature_c_max": 85.0, "cpu_percent_max": 90.0}},
            allow_short_soak=False,
            release={"release_id": "vision-2.4.1", "signature": "sig", "size": 5_242_880},
            targets=[target(d) for st in STAGES for d in st],
            **extra,
        )
        self.add(
            "prepare.passed",
            checks=[
                {"check": "artifact signature", "ok": True, "detail": "ed25519 key fleet-1"},
                {"check": "checksum", "ok": True, "detail": SHA[:12]},
                {"check": "compatibility", "ok": True, "detail": "all groups PASS"},
            ],
            distribution="http://127.0.0.1:7600/blobs/" + SHA,
        )
        self.add("distribution.started", url="http://127.0.0.1:7600/blobs/" + SHA)

    def deploy(
        self, stage: int, devices: list[str], *, skip: tuple[str, ...] = (), drill: bool = False
    ) -> None:
        self.add("stage.started", stage=stage, devices=len(devices))
        for d in devices:
            ok = d not in skip
            checks = {
                "reachable": ok,
                "agent": ok,
                "disk_free_mb": 52000,
                "disk_needed_mb": 600,
                "rollback_copy": True,
                "state": "active",
            }
            self.add(
                "device.preflight",
                d,
                stage=stage,
                ok=ok,
                checks=checks,
                rtt_ms=3.2,
                **({} if ok else {"reason": "connection refused"}),
            )
        reachable = [d for d in devices if d not in skip]
        self.add(
            "stage.preflight",
            stage=stage,
            reachable=reachable,
            unreachable=list(skip),
            rate=len(skip) / len(devices),
            decision="CONTINUE_SKIPPING",
            reason="",
        )
        for d in reachable:
            self.add("device.baseline", d, stage=stage, sample=baseline(d))
        for d in reachable:
            self.add("device.stage_requested", d, stage=stage, seq=1, release="vision-2.4.1")
            self.add(
                "device.staged",
                d,
                stage=stage,
                seq=1,
                release="vision-2.4.1",
                status="staged",
                replayed=False,
                attempts=1,
                seconds=4.0,
            )
            self.add("device.activate_requested", d, stage=stage, seq=2, release="vision-2.4.1")
            self.add(
                "device.activated",
                d,
                stage=stage,
                seq=2,
                release="vision-2.4.1",
                previous="vision-2.4.0",
            )
        if drill:
            d = devices[0]
            self.add("device.rollback_requested", d, seq=3, to="vision-2.4.0")
            self.add(
                "device.rolled_back",
                d,
                seq=3,
                release="vision-2.4.0",
                **{"from": "vision-2.4.1"},
                noop=False,
            )
            self.add("device.activate_requested", d, stage=stage, seq=4, release="vision-2.4.1")
            self.add(
                "device.activated",
                d,
                stage=stage,
                seq=4,
                release="vision-2.4.1",
                previous="vision-2.4.0",
            )
        for d in reachable:
            self.health(stage, d, "smoke")
        for d in skip:
            for attempt in (1, 2, 3):
                self.add(
                    "device.unreachable",
                    d,
                    stage=stage,
                    attempt=attempt,
                    error="connection refused",
                    outcome="failed",
                )
            self.add(
                "device.skipped",
                d,
                stage=stage,
                reason="unreachable after 3 retries",
                outcome="skipped",
            )
        self.add(
            "stage.deployed", stage=stage, deployed=len(reachable), failed=[], skipped=list(skip)
        )

    def health(self, stage: int, dev: str, rnd: str, **bad: Any) -> None:
        s = sample(dev, **bad)
        status, reasons = "healthy", []
        if bad:
            status = "failed"
            reasons = [
                f"error rate {100 * s['error_rate']:.1f} % is "
                f"{100 * (s['error_rate'] - 0.001):.1f} pts above baseline 0.1 % (max +1.0)"
            ]
        self.add(
            "device.health",
            dev,
            stage=stage,
            round=rnd,
            status=status,
            reasons=reasons,
            sample=s,
            baseline=baseline(dev),
        )

    def soak(self, stage: int, seconds: int = SOAK) -> None:
        self.add("soak.started", stage=stage, round="soak", seconds=seconds)
        self.add("soak.completed", stage=stage, seconds=seconds, dt=seconds)

    def verify(self, bad: dict[str, dict[str, Any]] | None = None) -> None:
        bad = bad or {}
        for d in CANARIES:
            self.health(0, d, "initial")
        self.soak(0)
        for d in CANARIES:
            self.health(0, d, "post-soak", **bad.get(d, {}))
        if bad:
            failed = [d for d in CANARIES if d in bad]
            self.add(
                "canary.verdict",
                verdict="FAIL",
                failed=failed,
                all_failed=len(failed) == len(CANARIES),
                reasons=[f"canary {d} is FAILED: after soak: error rate too high" for d in failed],
                soak_s=SOAK,
            )
        else:
            self.add(
                "canary.verdict",
                verdict="PASS",
                failed=[],
                all_failed=False,
                reasons=[],
                soak_s=SOAK,
            )
            self.add("approval.requested", verdict="PASS")

    def approve(self) -> None:
        self.add("approval.granted", actor="alice", comment="canaries look good", dt=600)

    def gate(
        self,
        stage: int,
        deployed: list[str],
        *,
        bad: tuple[str, ...] = (),
        action: str = "CONTINUE",
        scope: str = "NONE",
        rollback: list[str] | None = None,
        targeted: int,
        reason: str = "no failed devices",
    ) -> None:
        for d in deployed:
            self.health(stage, d, "initial")
        self.soak(stage)
        for d in deployed:
            self.health(stage, d, "post-soak", **({"error_rate": 0.08} if d in bad else {}))
        self.add(
            "wave.evaluated",
            stage=stage,
            action=action,
            rate=len(bad) / targeted,
            targeted=targeted,
            failed=list(bad),
            scope=scope,
            rollback=rollback or [],
            reason=reason,
            checked=len(deployed),
        )

    def rollback(
        self,
        devices: list[str],
        reason: str,
        *,
        fail: dict[str, str] | None = None,
        requested_by: str | None = None,
        capability_ok: list[str] | None = None,
    ) -> None:
        fail = fail or {}
        if requested_by:
            self.add("rollback.requested", actor=requested_by, devices=[], reason=reason)
        self.add("rollback.started", devices=devices, reason=reason)
        for d in devices:
            self.add("device.logs_captured", d, app=["last app line"], agent=["last agent line"])
        for d in devices:
            self.add("device.rollback_requested", d, seq=9, to="vision-2.4.0")
            if d in fail:
                self.add(
                    "device.rollback_failed",
                    d,
                    seq=9,
                    error=fail[d],
                    outcome="failed",
                    state={"release": "vision-2.4.1", "slots": ["a", "b"]},
                )
            else:
                self.add(
                    "device.rolled_back",
                    d,
                    seq=9,
                    release="vision-2.4.0",
                    **{"from": "vision-2.4.1"},
                    noop=False,
                )
        if fail:
            self.add("rollback.capability_checked", ok=capability_ok or [], missing=[])
        done = [d for d in devices if d not in fail]
        self.add(
            "rollback.completed",
            rolled_back=done,
            failed=list(fail),
            recovered=done,
            seconds=42.0,
            dt=40,
        )

    def confirm(self, deployed: list[str], result: str, counts: dict[str, int]) -> None:
        for d in deployed:
            self.health(len(STAGES) - 1, d, "confirm")
        self.add(
            "confirm.checked",
            rollback_copies={"ok": deployed, "missing": []},
            health={"healthy": len(deployed), "degraded": 0, "failed": 0},
        )
        self.add(
            "confirm.completed",
            result=result,
            counts=counts,
            reasons=[] if result == "COMPLETE" else ["1 device skipped, 1 quarantined"],
        )


# -- scenarios ----------------------------------------------------------------------------------
def happy() -> list[Event]:
    log = Log()
    log.created()
    log.deploy(0, CANARIES, drill=True)
    log.verify()
    log.approve()
    log.deploy(1, WAVE1)
    log.gate(1, CANARIES + WAVE1, targeted=3)
    log.deploy(2, WAVE2)
    log.gate(2, CANARIES + WAVE1 + WAVE2, targeted=5)
    everyone = CANARIES + WAVE1 + WAVE2
    log.confirm(
        everyone,
        "COMPLETE",
        {
            "deployed_healthy": 10,
            "skipped": 0,
            "quarantined": 0,
            "not_targeted": 2,
            "failed": 0,
            "rolled_back": 0,
        },
    )
    return log.events


def bad_canary() -> list[Event]:
    log = Log()
    log.created()
    log.deploy(0, CANARIES)
    log.verify(bad={"rpi-b-01": {"error_rate": 0.06}})
    log.rollback(["rpi-b-01"], "canary verdict FAIL: canary rpi-b-01 is FAILED")
    log.rollback(["orin-a-01"], "operator: abandon vision 2.4.1", requested_by="bob")
    return log.events


def wave_rolled_back() -> list[Event]:
    log = Log()
    log.created()
    log.deploy(0, CANARIES)
    log.verify()
    log.approve()
    log.deploy(1, WAVE1)
    log.gate(1, CANARIES + WAVE1, targeted=3)
    log.deploy(2, WAVE2)
    reason = "2 of 5 devices failed (40.0 %) > 20 %: roll back the wave and halt"
    log.gate(
        2,
        CANARIES + WAVE1 + WAVE2,
        bad=("orin-a-04", "rpi-b-05"),
        action="ROLLBACK_WAVE_AND_HALT",
        scope="WAVE",
        rollback=WAVE2,
        targeted=5,
        reason=reason,
    )
    log.rollback(WAVE2, reason)
    log.add("deployment.halted", reason=reason)
    return log.events


def rollback_failure() -> list[Event]:
    log = Log()
    log.created()
    log.deploy(0, CANARIES)
    log.verify()
    log.approve()
    log.deploy(1, WAVE1)
    reason = "2 of 3 devices failed (66.7 %) > 20 %: roll back the wave and halt"
    log.gate(
        1,
        CANARIES + WAVE1,
        bad=("rpi-b-02", "rpi-b-03"),
        action="ROLLBACK_WAVE_AND_HALT",
        scope="WAVE",
        rollback=WAVE1,
        targeted=3,
        reason=reason,
    )
    log.rollback(
        WAVE1,
        reason,
        fail={"rpi-b-03": "agent unreachable after slot switch"},
        capability_ok=CANARIES,
    )
    return log.events


def partial() -> list[Event]:
    """Wave 2: one device unreachable (skipped), one failed (20 %: pause), resumed by carol,
    the failed device quarantined, CONFIRM PARTIAL."""
    log = Log()
    log.created()
    log.deploy(0, CANARIES)
    log.verify()
    log.approve()
    log.deploy(1, WAVE1)
    log.gate(1, CANARIES + WAVE1, targeted=3)
    log.deploy(2, WAVE2, skip=("orin-a-05",))
    live = CANARIES + WAVE1 + WAVE2[:-1]
    reason = "1 of 5 devices failed (20.0 %): pause for a human decision"
    log.gate(
        2,
        live,
        bad=("rpi-b-04",),
        action="PAUSE_FOR_HUMAN",
        scope="DEVICE",
        rollback=["rpi-b-04"],
        targeted=5,
        reason=reason,
    )
    log.add("deployment.resumed", actor="carol", comment="isolated: quarantine it", dt=300)
    log.rollback(["rpi-b-04"], "quarantine failed devices of wave 2")
    healthy = [d for d in live if d != "rpi-b-04"]
    log.confirm(
        healthy,
        "PARTIAL",
        {
            "deployed_healthy": 8,
            "skipped": 1,
            "quarantined": 1,
            "not_targeted": 2,
            "failed": 0,
            "rolled_back": 0,
        },
    )
    return log.events


# -- canary rounds, stage failures, devices set aside (issue 7) ---------------------------------
# After a partial canary FAIL the failed canaries are rolled back and quarantined and the
# deployment halts; a human resumes with ``canary_failure`` (replace | exclude), the engine
# records ``canary.replaced``, and round 2 runs the whole canary stage and its own soak.
ROUND2_REPLACEMENT = "rpi-b-02"  # a wave-1 device of rpi-b-01's cell (rpi4, plant-b)
BAD_CANARY_WHY = "canary rpi-b-01 is FAILED: after soak: error rate 6.0 % is 5.9 pts above"
RPI_IN_WAVES = ["rpi-b-02", "rpi-b-03", "rpi-b-04", "rpi-b-05"]
EXCLUDE_WHY = "no canary proves group=plant-b, hardware=rpi4 after its canary failed"
DISK_FULL = "rpi-b-05: 507 insufficient-disk: disk full while staging"


def _canary_round(log: Log, canaries: list[str], n: int, bad: dict[str, Any]) -> None:
    """VERIFY of canary round ``n``: health, a soak of its own, health, the round's verdict."""
    for d in canaries:
        log.health(0, d, "initial")
    rnd = "soak" if n == 1 else f"soak-r{n}"
    log.add("soak.started", stage=0, round=rnd, seconds=SOAK)
    log.add("soak.completed", stage=0, round=rnd, seconds=SOAK, served_s=SOAK, dt=SOAK)
    for d in canaries:
        log.health(0, d, "post-soak", **bad.get(d, {}))
    failed = [d for d in canaries if d in bad]
    log.add(
        "canary.verdict",
        outcome="failed" if failed else "ok",
        verdict="FAIL" if failed else "PASS",
        failed=failed,
        all_failed=bool(failed) and len(failed) == len(canaries),
        reasons=[f"{BAD_CANARY_WHY} baseline 0.1 % (max +1.0)" for _ in failed],
        soak_s=SOAK,
        round=n,
    )
    if not failed:
        log.add("approval.requested", verdict="PASS")


def _round1_fails_and_bob_resumes(log: Log, choice: str) -> None:
    log.created()
    log.deploy(0, CANARIES, drill=True)
    _canary_round(log, CANARIES, 1, {"rpi-b-01": {"error_rate": 0.06}})
    # Partial FAIL: the failed canary is rolled back and quarantined, then the deployment halts.
    log.rollback(["rpi-b-01"], f"canary verdict FAIL: {BAD_CANARY_WHY}")
    log.add(
        "deployment.resumed",
        actor="bob",
        canary_failure=choice,
        comment="rpi-b-01 had a bad SD card",
        dt=300,
    )


def _gate(
    log: Log,
    stage: int,
    deployed: list[str],
    targeted: int,
    *,
    failed: dict[str, str] | None = None,
    crash: tuple[str, ...] = (),
) -> None:
    """``wave.evaluated`` as the engine now writes it: ``failed`` includes devices that failed
    to stage, ``targeted`` is every device of the wave, ``reasons`` says why each failed."""
    failed = dict(failed or {})
    for d in deployed:
        log.health(stage, d, "initial")
    log.soak(stage)
    for d in deployed:
        if d in crash:
            why = ["crash loop detected", "3 restarts on this release (max 2)"]
            log.add(
                "device.health",
                d,
                stage=stage,
                round="post-soak",
                status="failed",
                outcome="failed",
                reasons=why,
                sample=sample(d, restarts=3, crash_loop=True),
                baseline=baseline(d),
            )
            failed[d] = "health failed: " + "; ".join(why)
        else:
            log.health(stage, d, "post-soak")
    rate = len(failed) / targeted
    action = "QUARANTINE_AND_CONTINUE" if failed else "CONTINUE"
    log.add(
        "wave.evaluated",
        outcome="failed" if failed else "ok",
        stage=stage,
        action=action,
        rate=rate,
        targeted=targeted,
        failed=sorted(failed),
        scope="DEVICE" if failed else "NONE",
        rollback=sorted(failed),
        reason=(
            f"{len(failed)}/{targeted} devices failed ({100 * rate:.1f} %): below 5.0 %: "
            "quarantine them"
            if failed
            else f"no device failed (0/{targeted})"
        ),
        checked=len(deployed),
        reasons=failed,
    )
    if failed:  # the quarantine: set aside, rolled back (a no-op where nothing was installed)
        log.add("rollback.started", devices=sorted(failed), reason="quarantine failed devices")
        for d in sorted(failed):
            log.add("device.logs_captured", d, app=[], agent=[])
            if d in crash:
                log.add("device.rollback_requested", d, seq=9, to=None)
                log.add(
                    "device.rolled_back",
                    d,
                    seq=9,
                    release="vision-2.4.0",
                    **{"from": "vision-2.4.1"},
                    noop=False,
                )
            else:
                log.add(
                    "device.rolled_back",
                    d,
                    seq=0,
                    release="vision-2.4.0",
                    noop=True,
                    reason="device is not on the new release",
                )
        done = sorted(failed)
        log.add("rollback.completed", rolled_back=done, failed=[], recovered=done, seconds=3.0)


def canary_replaced() -> list[Event]:
    """Round 1 FAIL (rpi-b-01) -> bob resumes with "replace" -> rpi-b-02 replaces it and runs
    the whole canary stage -> round 2 PASS -> alice approves -> waves (one device of wave 2
    unreachable, skipped) -> CONFIRM PARTIAL."""
    log = Log()
    _round1_fails_and_bob_resumes(log, "replace")
    log.add(
        "canary.replaced",
        decision="replace",
        round=2,
        retired=["rpi-b-01"],
        replacements=[ROUND2_REPLACEMENT],
        why={ROUND2_REPLACEMENT: "replaces failed canary rpi-b-01 (same cell)"},
        excluded=[],
        reasons={},
        uncovered=[],
    )
    log.deploy(0, [ROUND2_REPLACEMENT])
    round2 = ["orin-a-01", ROUND2_REPLACEMENT]
    _canary_round(log, round2, 2, {})
    log.approve()
    wave1 = [d for d in WAVE1 if d != ROUND2_REPLACEMENT]
    log.deploy(1, wave1)
    _gate(log, 1, round2 + wave1, len(wave1))
    log.deploy(2, WAVE2, skip=("orin-a-05",))
    live = round2 + wave1 + WAVE2[:-1]
    _gate(log, 2, live, len(WAVE2))
    log.confirm(
        live,
        "PARTIAL",
        {
            "deployed_healthy": 8,
            "deployed_degraded": 0,
            "failed": 0,
            "skipped": 1,
            "excluded": 0,
            "quarantined": 1,
            "rolled_back": 0,
            "not_targeted": 2,
        },
    )
    return log.events


def canary_excluded() -> list[Event]:
    """Round 1 FAIL (rpi-b-01) -> bob resumes with "exclude": every rpi4/plant-b device of the
    waves is EXCLUDED (no canary proves its cell), round 2 re-verifies orin-a-01 alone."""
    log = Log()
    _round1_fails_and_bob_resumes(log, "exclude")
    log.add(
        "canary.replaced",
        decision="exclude",
        round=2,
        retired=["rpi-b-01"],
        replacements=[],
        why={},
        excluded=RPI_IN_WAVES,
        reasons={d: EXCLUDE_WHY for d in RPI_IN_WAVES},
        uncovered=["group=plant-b", "hardware=rpi4"],
    )
    # Round 2's canary stage has nothing new to deploy; the canary left is verified again.
    log.add("stage.started", stage=0, devices=2, todo=0)
    log.add(
        "stage.preflight",
        stage=0,
        reachable=[],
        unreachable=[],
        rate=0.0,
        decision="CONTINUE_SKIPPING",
        reason="",
    )
    log.add("stage.deployed", stage=0, deployed=1, failed=[], skipped=[])
    _canary_round(log, ["orin-a-01"], 2, {})
    log.approve()
    orins = [d for d in WAVE1 + WAVE2 if d.startswith("orin")]
    log.deploy(1, ["orin-a-02"])
    _gate(log, 1, ["orin-a-01", "orin-a-02"], 1)
    log.deploy(2, orins[1:])
    _gate(log, 2, ["orin-a-01", *orins], len(orins) - 1)
    log.confirm(
        ["orin-a-01", *orins],
        "PARTIAL",
        {
            "deployed_healthy": 5,
            "deployed_degraded": 0,
            "failed": 0,
            "skipped": 0,
            "excluded": 4,
            "quarantined": 1,
            "rolled_back": 0,
            "not_targeted": 2,
        },
    )
    return log.events


# A bigger inventory for honest decision-matrix rates: 1 failure in a wave of 22 is < 5 %.
BIG_WAVE1 = [f"orin-a-{n:02d}" for n in range(2, 13)] + [f"rpi-b-{n:02d}" for n in range(2, 13)]
BIG_WAVE2 = [f"orin-a-{n:02d}" for n in range(13, 24)] + [f"rpi-b-{n:02d}" for n in range(13, 24)]
BIG_STAGES = [CANARIES, BIG_WAVE1, BIG_WAVE2]
BIG_FLEET_TOTAL = 48
STAGE_FAILED = "rpi-b-05"
CRASHED = "orin-a-20"
UNREACHABLE = "rpi-b-22"


def _big_created(log: Log) -> None:
    """``Log.created``, then its ``deployment.created`` rewritten for the bigger inventory."""
    log.created()
    created = next(i for i, e in enumerate(log.events) if e.action == "deployment.created")
    ev = log.events[created]
    plan = dict(ev.details["plan"])
    targeted = [d for st in BIG_STAGES for d in st]
    cells: dict[tuple[str, str, str], int] = {}
    for d in targeted:
        cells[(group(d), hw(d), arch(d))] = cells.get((group(d), hw(d), arch(d)), 0) + 1
    plan.update(
        fleet_total=BIG_FLEET_TOTAL,
        targeted=len(targeted),
        device_groups=[
            {"group": g, "hardware": h, "arch": a, "count": n}
            for (g, h, a), n in sorted(cells.items())
        ],
        waves=[
            {
                "number": n,
                "devices": st,
                "count": len(st),
                "cumulative_percent": pct,
                "by_hardware": {"jetson-orin-nano": 11, "rpi4": 11},
                "by_group": {"plant-a": 11, "plant-b": 11},
            }
            for n, st, pct in ((1, BIG_WAVE1, 50.0), (2, BIG_WAVE2, 100.0))
        ],
    )
    details = dict(ev.details)
    details.update(
        stages=BIG_STAGES,
        fleet_total=BIG_FLEET_TOTAL,
        targets=[target(d) for d in targeted],
        plan=plan,
    )
    log.events[created] = replace(ev, details=details)


def _deploy_with_stage_failure(log: Log, stage: int, devices: list[str], bad: str) -> None:
    """A wave in which ``bad``'s stage answers 507 after a good pre-flight (its disk filled in
    between): ``device.deploy_failed`` step ``stage``, never activated."""
    log.deploy(stage, [d for d in devices if d != bad])
    deployed = log.events.pop()  # stage.deployed, re-recorded below with the failure in the wave
    log.add("device.stage_requested", bad, stage=stage, seq=1, release="vision-2.4.1")
    log.add(
        "device.deploy_failed",
        bad,
        stage=stage,
        step="stage",
        error=DISK_FULL,
        logs=[],
        outcome="failed",
    )
    # The engine's stage.deployed lists only devices that failed to start (FAILED), not those
    # that failed to stage: the report must still count the stage failure in the wave.
    log.add("stage.deployed", **{**dict(deployed.details), "deployed": len(devices) - 1})


def stage_failures() -> list[Event]:
    """48-device inventory. Wave 1: rpi-b-05 fails to stage (507 insufficient-disk), 1/22 =
    4.5 % -> QUARANTINE_AND_CONTINUE. Wave 2: orin-a-20 crash-loops (1/22, quarantined) and
    rpi-b-22 is unreachable (skipped after 3 attempts). CONFIRM PARTIAL."""
    log = Log()
    _big_created(log)
    log.deploy(0, CANARIES, drill=True)
    log.verify()
    log.approve()
    _deploy_with_stage_failure(log, 1, BIG_WAVE1, STAGE_FAILED)
    wave1 = [d for d in BIG_WAVE1 if d != STAGE_FAILED]
    _gate(
        log,
        1,
        CANARIES + wave1,
        len(BIG_WAVE1),
        failed={STAGE_FAILED: f"stage failed: {DISK_FULL}"},
    )
    log.deploy(2, BIG_WAVE2, skip=(UNREACHABLE,))
    wave2 = [d for d in BIG_WAVE2 if d != UNREACHABLE]
    _gate(log, 2, CANARIES + wave1 + wave2, len(BIG_WAVE2), crash=(CRASHED,))
    healthy = [d for d in CANARIES + wave1 + wave2 if d != CRASHED]
    log.confirm(
        healthy,
        "PARTIAL",
        {
            "deployed_healthy": 43,
            "deployed_degraded": 0,
            "failed": 0,
            "skipped": 1,
            "excluded": 0,
            "quarantined": 2,
            "rolled_back": 0,
            "not_targeted": 2,
        },
    )
    return log.events


SCENARIOS = {
    "happy": happy,
    "bad_canary": bad_canary,
    "wave_rolled_back": wave_rolled_back,
    "rollback_failure": rollback_failure,
    "partial": partial,
    "canary_replaced": canary_replaced,
    "canary_excluded": canary_excluded,
    "stage_failures": stage_failures,
}
