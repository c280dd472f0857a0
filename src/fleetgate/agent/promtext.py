r"""A minimal, bounded reader of the Prometheus text exposition format (version 0.0.4).

The agent scrapes the release's ``metrics_url`` and reports what it finds; the app is not
trusted, so this parser is small, linear in its input and bounded in what it keeps.

Contract:
- ``parse_exposition(text)`` reads one sample per line::

      name [ "{" label="value" { "," label="value" } [","] "}" ] value [ timestamp ]

  ``#`` lines (``HELP``, ``TYPE``, anything else) and blank lines are skipped. Label values
  may hold any character, with ``\\``, ``\"`` and ``\n`` escaped; the labels of a sample are
  put in a canonical order (``core.model.metric_key``), so ``a{y="1",x="2"}`` and
  ``a{x="2",y="1"}`` are one series. Values are Go-style floats: ``+Inf``, ``-Inf`` and
  ``NaN`` are read as such; underscores and non-ASCII digits are not numbers. An optional
  integer or decimal timestamp is accepted and ignored.
- A malformed line is skipped and counted (``skipped``); it never stops the parse. So is a line
  longer than ``MAX_LINE_CHARS``, a duplicate label and a series key longer than
  ``MAX_KEY_CHARS``.
- ``series`` keeps the first ``max_series`` distinct series in body order (a repeated series
  keeps its first value); the rest are counted in ``dropped``. ``totals`` sums the finite
  values of the metric names asked for in ``sum_of`` over all their label sets (the whole body,
  not only the kept series), which is how the agent reads request and error counters.
- Bounding the body (``MAX_BODY_BYTES``) is the caller's job: it reads at most that much and
  ``complete_lines`` cuts a truncated body back to its last whole line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from fleetgate.core.model import metric_key

MAX_SERIES = 200
MAX_BODY_BYTES = 256 * 1024
MAX_LINE_CHARS = 4096
MAX_KEY_CHARS = 512

_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_NAME = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*")
# Alternatives are disjoint (an escape always starts with a backslash): no backtracking blow-up.
_LABEL_VALUE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_LABEL_SEP = re.compile(r"[ \t]*([,}])")
_ESCAPE = re.compile(r"\\(.)")
_SPECIAL = {
    **{f"{sign}{word}": math.inf for sign in ("", "+") for word in ("inf", "infinity")},
    **{f"-{word}": -math.inf for word in ("inf", "infinity")},
    "nan": math.nan,
}


@dataclass
class Exposition:
    series: dict[str, float] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    skipped: int = 0
    dropped: int = 0


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return "\n" if char == "n" else char  # \\ -> \, \" -> ", anything else kept as written


def parse_value(token: str) -> float | None:
    """A sample value: a decimal float or ``±Inf``/``NaN``; ``None`` if it is neither."""
    special = _SPECIAL.get(token.lower())
    if special is not None:
        return special
    if not token.isascii() or "_" in token or token.lower().lstrip("+-").startswith(("i", "n")):
        return None  # Python's float() would take "1_0", "١٢", "infinity" and "nan(...)"
    try:
        return float(token)
    except ValueError:
        return None


def parse_sample(line: str) -> tuple[str, dict[str, str], float] | None:
    """``(name, labels, value)`` of one sample line, or ``None`` if it is not one."""
    m = _NAME.match(line)
    if m is None:
        return None
    name, pos = m.group(), m.end()
    labels: dict[str, str] = {}
    if line.startswith("{", pos):
        pos += 1
        close = _LABEL_SEP.match(line, pos)
        if close is not None and close.group(1) == "}":  # name{} has no labels
            pos = close.end()
        else:
            while True:
                key = _LABEL_NAME.match(line, pos)
                if key is None:
                    return None
                quoted = _LABEL_VALUE.match(line, key.end())
                if quoted is None or key.group(1) in labels:
                    return None
                labels[key.group(1)] = _ESCAPE.sub(_unescape, quoted.group(1))
                sep = _LABEL_SEP.match(line, quoted.end())
                if sep is None:
                    return None
                pos = sep.end()
                if sep.group(1) == "}":
                    break
                close = _LABEL_SEP.match(line, pos)  # a trailing comma: a,}
                if close is not None and close.group(1) == "}":
                    pos = close.end()
                    break
    elif pos < len(line) and line[pos] not in " \t":
        return None  # "name-x 1": the name ended on a character names cannot hold
    fields = line[pos:].split()
    if not 1 <= len(fields) <= 2:
        return None
    value = parse_value(fields[0])
    if value is None:
        return None
    if len(fields) == 2:
        stamp = parse_value(fields[1])
        if stamp is None or not math.isfinite(stamp):
            return None
    return name, labels, value


def parse_exposition(
    text: str, *, max_series: int = MAX_SERIES, sum_of: Collection[str] = ()
) -> Exposition:
    out = Exposition()
    summed: set[str] = set()  # a repeated series must not count twice in a total
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sample = parse_sample(line) if len(line) <= MAX_LINE_CHARS else None
        if sample is None:
            out.skipped += 1
            continue
        name, labels, value = sample
        key = metric_key(name, labels)
        if name in sum_of and math.isfinite(value) and key not in summed:
            summed.add(key)
            out.totals[name] = out.totals.get(name, 0.0) + value
        if len(key) > MAX_KEY_CHARS:
            out.skipped += 1
        elif key in out.series:
            continue
        elif len(out.series) >= max_series:
            out.dropped += 1
        else:
            out.series[key] = value
    return out


def complete_lines(body: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    """``body`` if it fits in ``limit`` bytes, else its first ``limit`` bytes cut back to the
    last whole line (a sample cut in half must not be read as a smaller number)."""
    if len(body) <= limit:
        return body
    head = body[:limit]
    return head[: head.rfind(b"\n") + 1]
