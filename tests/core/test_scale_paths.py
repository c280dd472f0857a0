"""Issue 12's fast paths decide exactly what the slow ones decided.

- ``event_hash`` with the details' canonical JSON given (the store serialises them once) is the
  hash of the whole event's canonical JSON, for any details.
- The health bounds compare in floats first: a value far from its limit is decided there, one
  within rounding distance exactly, as before.
"""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from fleetgate.core.events import Event, event_hash, seal
from fleetgate.core.health import evaluate_health
from fleetgate.core.manifest import canonical_json
from fleetgate.core.model import HealthSample
from fleetgate.core.policy import HealthPolicy

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(details=st.dictionaries(st.text(), json_values, max_size=6), device=st.text())
def test_a_hash_over_given_details_json_is_the_events_hash(
    details: dict[str, object], device: str
) -> None:
    ev = Event(
        ts="2026-11-29T10:00:00+00:00",
        deployment_id="d-1",
        action="device.health",
        outcome="ok",
        device_id=device,
        actor="fleetgate",
        details=details,
    )
    sealed = seal(7, ev, "0" * 64, canonical_json(details))
    assert sealed.hash == event_hash(7, ev, "0" * 64)


def sample(**kw: float) -> HealthSample:
    return HealthSample("d", app_up=True, latency_ms=10.0, **kw)  # type: ignore[arg-type]


def test_a_value_within_rounding_distance_of_its_limit_is_judged_exactly() -> None:
    policy = HealthPolicy(error_rate_increase_max=0.2)
    base = sample(error_rate=0.1)
    # 0.1 + 0.2 is 0.30000000000000004 in floats; the limit is exactly 0.3.
    assert evaluate_health(sample(error_rate=0.3), base, policy).healthy
    above = 0.30000000000000004  # the next float: above 0.3 exactly, equal to the float sum
    assert Fraction(repr(above)) > Fraction("0.3")
    assert not evaluate_health(sample(error_rate=above), base, policy).healthy


@given(
    err=st.floats(0, 1),
    base=st.floats(0, 1),
    inc=st.floats(0, 0.5),
    cpu=st.floats(0, 200),
    cpu_max=st.floats(1, 100),
)
def test_float_fast_path_agrees_with_exact_arithmetic(
    err: float, base: float, inc: float, cpu: float, cpu_max: float
) -> None:
    policy = HealthPolicy(error_rate_increase_max=inc, cpu_percent_max=cpu_max)
    v = evaluate_health(sample(error_rate=err, cpu_percent=cpu), sample(error_rate=base), policy)
    exact = Fraction(repr(err)) > Fraction(repr(base)) + Fraction(repr(inc))
    assert any(r.startswith("error rate") for r in v.reasons) is exact
    cpu_over = Fraction(repr(cpu)) > Fraction(repr(cpu_max))
    assert any(r.startswith("CPU") for r in v.reasons) is cpu_over
