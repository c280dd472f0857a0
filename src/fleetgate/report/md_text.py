"""Markdown building blocks the session report shares: tables (cells escaped, so a ``|`` in a
reason never splits a row), id lists cut to a few names and a count, durations, excerpts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetgate.core.plan_doc import format_duration

ID_LIMIT = 12  # a rollback of 10,000 devices lists a few ids and a count, not all of them
TEXT_LIMIT = 200


def cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("-" * (len(h) + 2) for h in header) + "|",
    ]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out


def ids_text(ids: Sequence[str]) -> str:
    if not ids:
        return "-"
    shown = ", ".join(ids[:ID_LIMIT])
    return shown if len(ids) <= ID_LIMIT else f"{shown} … (+{len(ids) - ID_LIMIT} more)"


def devices_text(n: int) -> str:
    return f"{n} device" if n == 1 else f"{n} devices"


def duration(seconds: Any) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "-"
    if float(seconds).is_integer():
        return format_duration(float(seconds))
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(round(seconds))


def short(text: str) -> str:
    """A heading-sized excerpt; the full text is in the JSON document and the VERIFY reasons."""
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1].rstrip() + "…"
