"""The spec's CANARY HEALTH REPORT box, and the number formats the session report shares.

Two steps, like the rest of the report: ``health_box_data`` turns one canary's recorded evidence
(a ``device.health`` sample, its baseline, the policy's limits, the verdict) into a JSON-safe
dict of raw numbers, and ``render_health_box`` draws the box from that dict alone, so the
``--format json`` document and the markdown always say the same thing.

Box invariants (tested):

- every border and content line of a box has the same length, ``BOX_WIDTH + 4`` characters
  (``+`` + dashes + ``+``; ``| `` + text padded to ``BOX_WIDTH`` + `` |``);
- text longer than the box (a long device id, a verdict reason quoting numbers) wraps onto
  indented continuation lines instead of breaking the border;
- a metric the device did not report reads ``n/a``; nothing is invented;
- Verdict is the canary's own (``report.session_verify``): a box never reads FAILED with
  PASS — a canary its round failed says FAIL, one whose round failed for others NOT PROVEN.

Units: ``error_rate`` is a fraction (0.01 = 1 %) in the data and a percentage in the text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

BOX_WIDTH = 48  # text columns inside "| " … " |": 52-character lines, as in the spec's box
NA = "n/a"


# -- number formats (shared with the VERIFY table) ---------------------------------------------
def _f(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def fmt_num(x: Any) -> str:
    """An integer as such, anything else to one decimal; ``n/a`` when not measured."""
    v = _f(x)
    if v is None or v != v:  # None, or NaN from a scrape
        return NA
    return str(int(v)) if v.is_integer() else f"{v:.1f}"


def fmt_percent(x: Any) -> str:
    return NA if _f(x) is None else f"{fmt_num(x)}%"


def fmt_rate(x: Any) -> str:
    """An error rate fraction as a percentage with two decimals (0.0123 -> ``1.23%``)."""
    v = _f(x)
    return NA if v is None or v != v else f"{100 * v:.2f}%"


def fmt_ms(x: Any) -> str:
    return NA if _f(x) is None else f"{fmt_num(x)} ms"


def fmt_mb(x: Any) -> str:
    """Megabytes, whole: a tenth of a MB is noise next to a device's memory or disk."""
    v = _f(x)
    return NA if v is None or v != v else f"{round(v)} MB"


# -- data ---------------------------------------------------------------------------------------
def _get(sample: Mapping[str, Any] | None, key: str) -> Any:
    return None if not sample else sample.get(key)


def health_box_data(
    *,
    device_id: str,
    device_type: str,
    status: str,
    sample: Mapping[str, Any] | None,
    baseline: Mapping[str, Any] | None,
    sample_round: str | None,
    disk_min_mb: float | None,
    temperature_max_c: float | None,
    verdict: str,
    reason: str,
    device_status: str | None = None,
    canary_round: int = 1,
) -> dict[str, Any]:
    """One canary's box as raw values. ``sample``/``baseline`` are ``HealthSample`` dicts as
    recorded in ``device.health`` events; ``status`` is that event's status in capitals (or
    ``FAILED`` / ``-`` when the device never produced a sample); ``device_status`` the device's
    status now (the box says both when they differ: "FAILED (now QUARANTINED)"); ``verdict``
    the canary's own verdict in its canary round ``canary_round``."""
    app_up = _get(sample, "app_up")
    return {
        "device_id": device_id,
        "type": device_type,
        "status": status,
        "device_status": device_status,
        "canary_round": canary_round,
        "round": sample_round,
        "endpoint_responding": None if app_up is None else bool(app_up),
        "latency_ms": _get(sample, "latency_ms"),
        "baseline_latency_ms": _get(baseline, "latency_ms"),
        "error_rate": _get(sample, "error_rate"),
        "baseline_error_rate": _get(baseline, "error_rate"),
        "cpu_percent": _get(sample, "cpu_percent"),
        "baseline_cpu_percent": _get(baseline, "cpu_percent"),
        "mem_used_mb": _get(sample, "mem_used_mb"),
        "mem_total_mb": _get(sample, "mem_total_mb"),
        "baseline_mem_used_mb": _get(baseline, "mem_used_mb"),
        "disk_free_mb": _get(sample, "disk_free_mb"),
        "disk_min_mb": disk_min_mb,
        "gpu_percent": _get(sample, "gpu_percent"),
        "baseline_gpu_percent": _get(baseline, "gpu_percent"),
        "temperature_c": _get(sample, "temperature_c"),
        "temperature_max_c": temperature_max_c,
        "restarts": _get(sample, "restarts"),
        "crash_loop": _get(sample, "crash_loop"),
        "verdict": verdict,
        "reason": reason,
    }


# -- rendering ----------------------------------------------------------------------------------
def _endpoint(up: Any) -> str:
    if up is None:
        return "not measured"
    return "responding" if up else "not responding"


def _gpu(b: Mapping[str, Any]) -> str:
    if _f(b["gpu_percent"]) is None and _f(b["baseline_gpu_percent"]) is None:
        return "n/a (no GPU reading)"
    return f"{fmt_percent(b['gpu_percent'])} (baseline: {fmt_percent(b['baseline_gpu_percent'])})"


def _status(b: Mapping[str, Any]) -> str:
    now = b.get("device_status")
    if not now or now == b["status"]:
        return str(b["status"])
    return str(now) if b["status"] == "-" else f"{b['status']} (now {now})"


def _box_text(b: Mapping[str, Any]) -> list[str]:
    temp = b["temperature_c"]
    temp_s = NA if _f(temp) is None else f"{fmt_num(temp)} C"
    limit = b["temperature_max_c"]
    limit_s = NA if _f(limit) is None else f"{fmt_num(limit)} C"
    mem = f"{fmt_mb(b['mem_used_mb'])} / {fmt_mb(b['mem_total_mb'])}"
    return [
        f"Device: {b['device_id']}",
        f"Type: {b['type']}",
        f"Status: {_status(b)}",
        "",
        "Application Health:",
        f"  Health endpoint: {_endpoint(b['endpoint_responding'])}",
        f"  Response time: {fmt_ms(b['latency_ms'])} "
        f"(baseline: {fmt_ms(b['baseline_latency_ms'])})",
        f"  Error rate: {fmt_rate(b['error_rate'])} "
        f"(baseline: {fmt_rate(b['baseline_error_rate'])})",
        "",
        "Resource Utilization:",
        f"  CPU: {fmt_percent(b['cpu_percent'])} "
        f"(baseline: {fmt_percent(b['baseline_cpu_percent'])})",
        f"  Memory: {mem} (baseline: {fmt_mb(b['baseline_mem_used_mb'])})",
        f"  Disk: {fmt_mb(b['disk_free_mb'])} free (minimum: {fmt_mb(b['disk_min_mb'])})",
        f"  GPU: {_gpu(b)}",
        f"  Temperature: {temp_s} (threshold: {limit_s})",
        "",
        f"Verdict: {b['verdict']}",
        f"Reason: {b['reason'] or '-'}",
    ]


def _wrap(line: str) -> list[str]:
    if len(line) <= BOX_WIDTH:
        return [line]
    indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
    return textwrap.wrap(
        line,
        BOX_WIDTH,
        subsequent_indent=indent,
        break_long_words=True,
        break_on_hyphens=False,
    )


def render_health_box(box: Mapping[str, Any]) -> list[str]:
    """The box as lines: the ``CANARY HEALTH REPORT`` title, then the bordered box."""
    border = "+" + "-" * (BOX_WIDTH + 2) + "+"
    body = [f"| {part.ljust(BOX_WIDTH)} |" for line in _box_text(box) for part in _wrap(line)]
    return ["CANARY HEALTH REPORT", border, *body, border]
