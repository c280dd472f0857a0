"""``HealthSample``: the app's own metrics are a frozen mapping of finite numbers, and a sample
with nothing measured is told apart from a full one."""

from __future__ import annotations

import math

import pytest

from fleetgate.core.model import STANDARD_METRICS, HealthSample, metric_key


def test_metrics_default_to_none_and_are_frozen_copies():
    assert dict(HealthSample("d", app_up=True).metrics) == {}
    given = {"a": 1, metric_key("q", {"quantile": "0.95"}): 0.5}
    sample = HealthSample("d", app_up=True, metrics=given)
    given["a"] = 99  # the caller's dict is not the sample's
    assert dict(sample.metrics) == {"a": 1.0, 'q{quantile="0.95"}': 0.5}
    assert type(sample.metrics["a"]) is float
    with pytest.raises(TypeError):
        sample.metrics["a"] = 2.0  # type: ignore[index]
    assert sample == HealthSample("d", app_up=True, metrics={"a": 1.0, 'q{quantile="0.95"}': 0.5})


@pytest.mark.parametrize(
    "bad", [{"a": "1"}, {"a": True}, {"a": math.nan}, {"a": math.inf}, {"": 1}]
)
def test_metrics_must_be_finite_numbers_with_names(bad):
    with pytest.raises(ValueError):
        HealthSample("d", app_up=True, metrics=bad)


def test_no_data_means_no_standard_reading_and_no_app_metric():
    assert HealthSample("d", app_up=True).has_no_data
    assert HealthSample("d", app_up=False).has_no_data
    for name in STANDARD_METRICS:
        assert not HealthSample("d", app_up=True, **{name: 0.0}).has_no_data, name  # type: ignore[arg-type]
    assert not HealthSample("d", app_up=True, metrics={"app_up": 1}).has_no_data
