"""Device selectors: ``--select 'group=plant-a,hardware=rpi4|gateway,!state=quarantine'``.

Grammar::

    selector := term ("," term)*          all terms must hold (AND)
    term     := ["!"] key ("=" | "!=") values
    values   := pattern ("|" pattern)*    any pattern may match (OR)
    key      := [A-Za-z0-9._-]+           id, hardware, arch, group, state, monitoring,
                                          critical, gpu, address, or a software name
    pattern  := text without , | =       shell glob (fnmatch): *, ?, [abc]

``!key=v`` and ``key!=v`` both negate the term; using both is an error. Values are compared
with ``Device.attribute``: exact (case-sensitive) for text fields and software versions,
case-insensitive for the enumerations (arch, state, monitoring, critical, gpu).

A key that a device does not have (a software name it lacks, or an unknown key) is *absent*:
a positive term never matches it — ``jetpack=*`` means "has any jetpack" — and a negated term
always does. Unknown keys are not errors, since software names are open-ended; malformed terms
(``hardware``, ``=x``, ``a==b``, ``a=``, ``a=x|``, a trailing comma) raise ``InputError`` naming
the selector and the term.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from fleetgate.core.model import Device
from fleetgate.errors import InputError

_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_CASE_INSENSITIVE = frozenset({"arch", "state", "monitoring", "critical", "gpu"})


@dataclass(frozen=True, slots=True)
class Term:
    """One ``key=pattern|pattern`` condition, possibly negated."""

    key: str
    patterns: tuple[str, ...]
    negated: bool = False

    def matches(self, device: Device) -> bool:
        value = device.attribute(self.key)
        if not value:
            return self.negated
        if self.key in _CASE_INSENSITIVE:
            value = value.lower()
            hit = any(fnmatchcase(value, p.lower()) for p in self.patterns)
        else:
            hit = any(fnmatchcase(value, p) for p in self.patterns)
        return hit != self.negated

    def __str__(self) -> str:
        op = "!=" if self.negated else "="
        return f"{self.key}{op}{'|'.join(self.patterns)}"


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed selector: the AND of its terms."""

    expr: str
    terms: tuple[Term, ...]

    def matches(self, device: Device) -> bool:
        return all(term.matches(device) for term in self.terms)

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.terms)


def _parse_term(expr: str, raw: str) -> Term:
    def bad(why: str) -> InputError:
        return InputError(f"selector {expr!r}: term {raw.strip()!r}: {why}")

    text = raw.strip()
    if not text:
        raise bad("empty term (stray comma?)")
    key, eq, value = text.partition("=")
    if not eq:
        raise bad("expected key=value, key!=value or !key=value")
    key = key.strip()
    negated = False
    if key.startswith("!"):
        negated, key = True, key[1:].strip()
    if key.endswith("!"):
        if negated:
            raise bad("negated twice; use either !key=value or key!=value")
        negated, key = True, key[:-1].strip()
    if not key:
        raise bad("missing key before '='")
    if not _KEY_RE.match(key):
        raise bad(f"key {key!r} must be letters, digits, '.', '_' or '-'")
    patterns = tuple(p.strip() for p in value.split("|"))
    for pattern in patterns:
        if not pattern:
            raise bad("empty value; write key=value (use key=* for 'has any value')")
        if "=" in pattern:
            raise bad(f"unexpected '=' in value {pattern!r}")
    return Term(key=key, patterns=patterns, negated=negated)


def parse_selector(expr: str) -> Selector:
    """Parse ``expr``; raises ``InputError`` naming the selector and the bad term."""
    if not expr.strip():
        raise InputError(f"selector {expr!r}: empty; expected terms like group=plant-a")
    return Selector(expr=expr, terms=tuple(_parse_term(expr, raw) for raw in expr.split(",")))


def select_devices(devices: Iterable[Device], expr: str | None) -> list[Device]:
    """The devices ``expr`` matches, in their original order; all of them when ``expr`` is
    ``None``."""
    if expr is None:
        return list(devices)
    selector = parse_selector(expr)
    return [d for d in devices if selector.matches(d)]
