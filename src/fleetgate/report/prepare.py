"""The PREPARE section of the spec's session template, from a ``Plan``.

Two renderings of the same data: ``plan_to_dict`` (what ``--json`` prints and what the engine
records in the ``deployment.planned`` event, so the report can be rebuilt from the log alone)
and ``render_prepare_md`` (the spec's markdown, rendered from that dict — never from live
objects, so a report made later from the log reads the same as the one printed at plan time).
"""

from __future__ import annotations

from typing import Any

from fleetgate.core.plan_doc import plan_to_dict

__all__ = ["checksum_text", "plan_to_dict", "render_prepare_md"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def checksum_text(a: dict[str, Any]) -> str:
    """Both digests, each named: an operator compares the bundle's with ``artifact build``."""
    payload, bundle = a.get("sha256"), a.get("bundle_sha256")
    if bundle and payload:
        return f"sha256 {bundle} (bundle, as printed by artifact build); payload sha256 {payload}"
    if bundle:
        return f"sha256 {bundle} (bundle, as printed by artifact build)"
    if payload:
        return f"payload sha256 {payload} (the bundle's digest was not recorded)"
    return "not built yet (app directory)"


def render_prepare_md(p: dict[str, Any]) -> str:
    a = p["artifact"]
    lines = ["### PREPARE Phase", ""]
    lines.append(f"**Artifact**: {a['name']} v{a['version']} ({a['kind']})")
    lines.append(f"**Checksum**: {checksum_text(a)}")
    lines.append(
        f"**Target fleet**: {p['targeted']} devices across {len(p['groups'])} device groups "
        f"(inventory: {p['fleet_total']}, excluded: {len(p['excluded'])}, "
        f"not selected: {p['not_targeted']})"
    )
    lines.append(f"**Distribution point**: {p['distribution'] or 'controller (on deploy start)'}")
    lines.append(
        f"**Disk space required**: {a['disk_mb']} MB per device "
        f"(+ rollback copy: {2 * a['disk_mb']} MB)"
    )
    lines += ["", "**Device groups**:"]
    lines += _table(
        ["Group", "Device Type", "Count", "Architecture"],
        [[g["group"], g["hardware"], str(g["count"]), g["arch"]] for g in p["device_groups"]],
    )
    lines += ["", f"**Canary selection**: {len(p['canaries'])} devices"]
    lines += _table(
        ["Device ID", "Type", "Group", "Reason Selected"],
        [[c["id"], c["hardware"], c["group"], c["reason"]] for c in p["canaries"]],
    )
    lines += ["", "**Waves** (after the canaries):"]
    lines += _table(
        ["Wave", "Devices", "Fleet after wave", "By type", "By group"],
        [
            [
                str(w["number"]),
                str(w["count"]),
                f"{w['cumulative_percent']:.0f} %",
                ", ".join(f"{k} {v}" for k, v in w["by_hardware"].items()),
                ", ".join(f"{k} {v}" for k, v in w["by_group"].items()),
            ]
            for w in p["waves"]
        ],
    )
    compat = p["compatibility"]
    verdict = "All groups PASS" if all(c["status"] == "PASS" for c in compat) else "see table"
    lines += ["", f"**Compatibility**: {verdict}"]
    lines += _table(
        ["Group", "Device Type", "Architecture", "Compatible", "Status", "Why not"],
        [
            [
                c["group"],
                c["hardware"],
                c["arch"],
                f"{c['compatible']}/{c['count']}",
                c["status"],
                "; ".join(c["reasons"]) or "-",
            ]
            for c in compat
        ],
    )
    if p["excluded"]:
        lines += ["", f"**Excluded devices**: {len(p['excluded'])}"]
        lines += _table(["Device ID", "Reason"], [[e["id"], e["reason"]] for e in p["excluded"]])
    for note in p["notes"]:
        lines += ["", f"> Note: {note}"]
    lines.append("")
    if p["blockers"]:
        lines += [f"**Blocked**: {b}" for b in p["blockers"]]
    else:
        lines.append(
            "Proceeding to CANARY phase."
            if p.get("started")
            else "Plan only: no device was touched."
        )
    return "\n".join(lines) + "\n"
