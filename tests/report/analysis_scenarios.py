"""Hand-built logs of canary rounds judged by analysis (issue 11), in the vocabulary of
docs/events.md, on the inventory of ``report_scenarios``.

Each canary has a control from wave 1 (``canary.controls``): orin-a-01 -> orin-a-02 and
rpi-b-01 -> rpi-b-02. The soak is sampled every 30 s (``soak.sampled``, canaries and controls
at the same ticks); the samples follow a seeded generator around each device's baseline, so the
logs are deterministic. The judge's rows in ``canary.verdict.analysis`` are written by hand with
numbers in keeping with the series (ratio metrics as ratios to each device's own before-value).

- ``analysis_pass``: both canaries PASS against their controls (orin-a-01 against a pool of
  two, ``canary.controls.pools``); alice approves; COMPLETE.
- ``analysis_inconclusive``: rpi-b-01's latency (+23.9 % against +0.2 %) straddles the 25 %
  tolerance, the soak extends once (``soak-ext``), still INCONCLUSIVE; alice approves accepting
  the risk (``accept_inconclusive``); COMPLETE.
- ``analysis_error_fail``: orin-a-01's error rate +4.8 pp beyond the 1 pp tolerance: FAIL;
  rpi-b-01 had no control (``without``) and passed its thresholds; orin-a-01 is rolled back.
- ``threshold_note``: an audited 5 min soak is too short for the analysis: threshold judge
  only, with the engine's note; PASS, waiting for approval.
"""

from __future__ import annotations

import random
from typing import Any

from report_scenarios import CANARIES, WAVE1, WAVE2, Log, baseline, sample

from fleetgate.core.events import Event

CONTROLS = {"orin-a-01": "orin-a-02", "rpi-b-01": "rpi-b-02"}
# analysis_pass pools two controls for orin-a-01 (orin-a-03 is a wave-2 device).
POOLS = {"orin-a-01": ["orin-a-02", "orin-a-03"], "rpi-b-01": ["rpi-b-02"]}
TICK_S = 30
APP_METRIC = 'inference_latency_seconds{quantile="0.95"}'


def _soak_sample(dev: str, rng: random.Random, latency: float, error: float) -> dict[str, Any]:
    b = baseline(dev)
    s = sample(
        dev,
        latency_ms=round(b["latency_ms"] * latency * rng.uniform(0.95, 1.05), 2),
        error_rate=round(max(0.0, b["error_rate"] + error + rng.uniform(-0.0005, 0.0005)), 5),
        cpu_percent=round(b["cpu_percent"] * rng.uniform(0.9, 1.1), 2),
        mem_used_mb=round(b["mem_used_mb"] * rng.uniform(0.99, 1.01), 1),
        release="vision-2.4.1" if dev in CANARIES else "vision-2.4.0",
    )
    del s["device_id"]
    s["metrics"] = {APP_METRIC: round(0.04 * latency * rng.uniform(0.95, 1.05), 5)}
    return s


def _ticks(
    log: Log,
    rnd: str,
    seconds: int,
    *,
    devices: list[str],
    latency: dict[str, float] | None = None,
    error: dict[str, float] | None = None,
) -> int:
    """``soak.started``, a ``soak.sampled`` every 30 s (ticks 0 … seconds/30), then
    ``soak.completed``; returns the number of ticks."""
    rng = random.Random(f"{rnd}:{seconds}")
    log.add("soak.started", stage=0, round=rnd, seconds=seconds)
    n = seconds // TICK_S + 1
    for k in range(n):
        samples = {
            d: _soak_sample(d, rng, (latency or {}).get(d, 1.0), (error or {}).get(d, 0.0))
            for d in devices
        }
        log.add(
            "soak.sampled",
            stage=0,
            round=rnd,
            tick=k,
            t=float(k * TICK_S),
            samples=samples,
            dt=0.0 if k == 0 else TICK_S,
        )
    log.add("soak.completed", stage=0, round=rnd, seconds=seconds, served_s=seconds, dt=0.5)
    return n


def metric(
    name: str,
    verdict: str,
    canary: float,
    control: float,
    effect: float,
    low: float,
    high: float,
    tolerated: float,
    *,
    n: int = 21,
    critical: bool = True,
) -> dict[str, Any]:
    """One row of ``canary.verdict.analysis[c].metrics`` as ``judgement_doc`` writes it."""
    where = {
        "PASS": "the interval lies within the tolerance",
        "FAIL": "the interval lies wholly beyond the tolerance",
        "INCONCLUSIVE": "the interval straddles the tolerance",
    }[verdict]
    return {
        "name": name,
        "verdict": verdict,
        "canary_median": canary,
        "control_median": control,
        "effect": effect,
        "ci_low": low,
        "ci_high": high,
        "n_canary": n,
        "n_control": n,
        "tolerated": tolerated,
        "critical": critical,
        "reason": (
            f"{name}: canary median {canary:.4g} (n={n}) vs control median {control:.4g} "
            f"(n={n}): shift {effect:+.4g} (98% CI {low:+.4g} to {high:+.4g}, Mann-Whitney "
            f"p=0.01), tolerated +{tolerated:.4g}; {where}"
        ),
    }


def healthy_rows(n: int = 21, app: bool = False) -> list[dict[str, Any]]:
    rows = [
        metric("error_rate", "PASS", 0.0012, 0.0011, 0.0001, -0.0002, 0.0004, 0.01, n=n),
        metric("latency_ms", "PASS", 1.012, 1.004, 0.008, -0.012, 0.027, 0.251, n=n),
        metric("cpu_percent", "PASS", 1.01, 0.99, 0.02, -0.04, 0.07, 0.2475, n=n, critical=False),
        metric("mem_used_mb", "PASS", 1.0, 1.0, 0.0, -0.004, 0.004, 0.25, n=n, critical=False),
        metric("restarts", "PASS", 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, n=n),
    ]
    if app:
        # The baselines carry no app metrics: the judge compares this one as measured.
        rows.append(metric(APP_METRIC, "PASS", 0.0404, 0.04, 0.0004, -0.0008, 0.0016, 0.01, n=n))
    return rows


def doc(control: str, verdict: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    deciding = [r for r in rows if r["verdict"] != "PASS" and r["critical"]]
    return {
        "control": control,
        "verdict": verdict,
        "reasons": [f"{r['verdict']} {r['reason']}" for r in deciding],
        "metrics": rows,
    }


def _controls(
    log: Log, without: tuple[str, ...] = (), pools: dict[str, list[str]] | None = None
) -> list[str]:
    """``canary.controls``; returns every device sampled during the soak."""
    pooled = {c: p for c, p in (pools or {c: [k] for c, k in CONTROLS.items()}).items()}
    pooled = {c: p for c, p in pooled.items() if c not in without}
    pre = {
        k: {f: v for f, v in baseline(k).items() if f != "device_id"}
        for p in pooled.values()
        for k in p
    }
    extra = {"pools": pooled} if pools else {}  # logs from before pools have none
    log.add(
        "canary.controls",
        controls={c: p[0] for c, p in pooled.items()},
        pre=pre,
        without=list(without),
        **extra,
    )
    return [*CANARIES, *(k for p in pooled.values() for k in p)]


def _verify_analysed(
    log: Log,
    analysis: dict[str, dict[str, Any]],
    *,
    verdict: str,
    failed: tuple[str, ...] = (),
    inconclusive: tuple[str, ...] = (),
    extend: bool = False,
    latency: dict[str, float] | None = None,
    error: dict[str, float] | None = None,
    without: tuple[str, ...] = (),
    pools: dict[str, list[str]] | None = None,
) -> None:
    sampled = _controls(log, without, pools)
    for d in CANARIES:
        log.health(0, d, "initial")
    _ticks(log, "soak", 600, latency=latency, error=error, devices=sampled)
    if extend:
        _ticks(log, "soak-ext", 900, latency=latency, error=error, devices=sampled)
    for d in CANARIES:
        log.health(0, d, "post-soak")
    reasons = [
        f"canary {c} vs control {a['control']}: {a['verdict']}: " + "; ".join(a["reasons"])
        for c, a in sorted(analysis.items())
        if a["verdict"] != "PASS"
    ]
    log.add(
        "canary.verdict",
        outcome="ok" if verdict == "PASS" else "failed",
        verdict=verdict,
        failed=list(failed),
        all_failed=len(failed) == len(CANARIES),
        inconclusive=list(inconclusive),
        reasons=reasons,
        notes=[],
        judge="analysis",
        analysis=analysis,
        soak_s=600,
        round=1,
    )
    if verdict == "PASS":
        log.add("approval.requested", verdict="PASS")
    elif verdict == "INCONCLUSIVE":
        log.add(
            "approval.requested",
            verdict="INCONCLUSIVE",
            evidence={c: analysis[c] for c in inconclusive},
        )


def _rollout_and_confirm(log: Log) -> None:
    log.deploy(1, WAVE1)
    log.gate(1, CANARIES + WAVE1, targeted=3)
    log.deploy(2, WAVE2)
    log.gate(2, CANARIES + WAVE1 + WAVE2, targeted=5)
    log.confirm(
        CANARIES + WAVE1 + WAVE2,
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


def analysis_pass() -> list[Event]:
    log = Log()
    log.created()
    log.deploy(0, CANARIES, drill=True)
    _verify_analysed(
        log,
        {
            "orin-a-01": doc("orin-a-02", "PASS", healthy_rows(app=True)),
            "rpi-b-01": doc("rpi-b-02", "PASS", healthy_rows()),
        },
        verdict="PASS",
        pools=POOLS,
    )
    log.approve()
    _rollout_and_confirm(log)
    return log.events


def inconclusive_rows() -> list[dict[str, Any]]:
    rows = healthy_rows(n=52)
    rows[1] = metric("latency_ms", "INCONCLUSIVE", 1.239, 1.002, 0.239, 0.224, 0.254, 0.2505, n=52)
    return rows


def analysis_inconclusive() -> list[Event]:
    log = Log()
    log.created()
    log.deploy(0, CANARIES, drill=True)
    _verify_analysed(
        log,
        {
            "orin-a-01": doc("orin-a-02", "PASS", healthy_rows(n=52)),
            "rpi-b-01": doc("rpi-b-02", "INCONCLUSIVE", inconclusive_rows()),
        },
        verdict="INCONCLUSIVE",
        inconclusive=("rpi-b-01",),
        extend=True,
        latency={"rpi-b-01": 1.24},
    )
    log.add(
        "approval.granted",
        actor="alice",
        comment="latency budget allows +25 %",
        accept_inconclusive=True,
        dt=600,
    )
    _rollout_and_confirm(log)
    return log.events


def error_rows() -> list[dict[str, Any]]:
    rows = healthy_rows()
    rows[0] = metric("error_rate", "FAIL", 0.0492, 0.0011, 0.048, 0.0462, 0.0495, 0.01)
    return rows


def analysis_error_fail() -> list[Event]:
    log = Log()
    log.created()
    log.deploy(0, CANARIES)
    _verify_analysed(
        log,
        {"orin-a-01": doc("orin-a-02", "FAIL", error_rows())},
        verdict="FAIL",
        failed=("orin-a-01",),
        error={"orin-a-01": 0.048},
        without=("rpi-b-01",),
    )
    log.rollback(["orin-a-01"], "canary verdict FAIL: canary orin-a-01 vs control orin-a-02")
    return log.events


THRESHOLD_NOTE = "threshold judge only: a 300s soak yields fewer than 10 samples at a 30s interval"


def threshold_note() -> list[Event]:
    log = Log()
    log.created()
    log.add("policy.short_soak_allowed", canary_s=300, between_waves_s=300)
    log.deploy(0, CANARIES)
    for d in CANARIES:
        log.health(0, d, "initial")
    log.soak(0, 300)
    for d in CANARIES:
        log.health(0, d, "post-soak")
    log.add(
        "canary.verdict",
        verdict="PASS",
        failed=[],
        all_failed=False,
        inconclusive=[],
        reasons=[],
        notes=[THRESHOLD_NOTE],
        judge="threshold",
        analysis={},
        soak_s=300,
        round=1,
    )
    log.add("approval.requested", verdict="PASS")
    return log.events


SCENARIOS = {
    "analysis_pass": analysis_pass,
    "analysis_inconclusive": analysis_inconclusive,
    "analysis_error_fail": analysis_error_fail,
    "threshold_note": threshold_note,
}
