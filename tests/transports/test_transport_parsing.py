"""Error mapping, result parsing and token resolution: the transport's pure parts."""

from __future__ import annotations

import pytest

from fleetgate.core.model import Arch, Device, Resources
from fleetgate.errors import DeviceError, TransportError
from fleetgate.transports.base import (
    ActivateResult,
    DeviceRefusal,
    Facts,
    RollbackResult,
    TransportUnavailable,
    error_from_reply,
    parse_health,
)
from fleetgate.transports.tokens import TokenSource


def body(code: str, message: str = "m", retryable: bool = False) -> dict[str, object]:
    return {"error": code, "message": message, "retryable": retryable}


@pytest.mark.parametrize(
    ("status", "code", "cls", "retryable"),
    [
        (400, "bad-request", DeviceRefusal, False),
        (401, "unauthorized", DeviceRefusal, False),
        (403, "wrong-device", DeviceRefusal, False),
        (404, "unknown-release", DeviceRefusal, False),
        (404, "not-found", DeviceRefusal, False),
        (409, "stale-seq", DeviceRefusal, False),
        (409, "seq-conflict", DeviceRefusal, False),
        (409, "no-rollback-copy", DeviceRefusal, False),
        (409, "incompatible", DeviceRefusal, False),
        (409, "in-progress", TransportUnavailable, True),
        (409, "busy", TransportUnavailable, True),
        (422, "integrity-error", DeviceRefusal, False),
        (500, "internal", DeviceRefusal, False),
        (502, "download-failed", DeviceRefusal, True),
        (507, "insufficient-disk", DeviceRefusal, False),
    ],
)
def test_protocol_errors_map_to_the_protocol_table(status, code, cls, retryable):
    exc = error_from_reply("rpi-a-01", status, body(code, "why"))
    assert type(exc) is cls
    assert exc.code == code and exc.status == status and exc.retryable is retryable
    assert exc.device_id == "rpi-a-01"
    assert str(exc) == f"rpi-a-01: {code} (HTTP {status}): why"
    assert isinstance(exc, TransportError if cls is TransportUnavailable else DeviceError)


def test_the_table_not_the_body_decides_retryable():
    # A device claiming a tampered artifact is retryable must not talk the engine into it.
    exc = error_from_reply("d", 422, body("integrity-error", retryable=True))
    assert exc.retryable is False


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_without_protocol_body_is_a_retryable_transport_error(status):
    for raw in (None, {"detail": "gateway"}, ["x"]):
        exc = error_from_reply("d", status, raw)
        assert isinstance(exc, TransportUnavailable)
        assert exc.retryable and exc.code == f"http-{status}" and exc.status == status


def test_4xx_without_protocol_body_is_a_non_retryable_refusal():
    exc = error_from_reply("d", 404, None)
    assert isinstance(exc, DeviceRefusal) and not exc.retryable and exc.code == "http-404"


def test_health_is_attributed_to_the_device_asked_not_the_body():
    sample = parse_health(
        "gw-a-01",
        {
            "device_id": "someone-else",
            "app_up": True,
            "latency_ms": 3,
            "error_rate": None,
            "restarts": 2,
            "crash_loop": False,
            "release": "app-1.0.0-00000000",
            "temperature_c": 51.5,
        },
    )
    assert sample.device_id == "gw-a-01" and sample.app_up and sample.latency_ms == 3.0
    assert sample.error_rate is None and sample.restarts == 2 and sample.temperature_c == 51.5


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"app_up": "yes"},
        {"app_up": True, "latency_ms": "fast"},
        {"app_up": True, "restarts": 1.5},
        {"app_up": True, "cpu_percent": float("nan")},
    ],
)
def test_malformed_health_is_a_non_retryable_bad_response(bad):
    with pytest.raises(DeviceRefusal) as info:
        parse_health("d", bad)
    assert info.value.code == "bad-response" and not info.value.retryable
    assert info.value.device_id == "d"


def test_health_metrics_are_read_into_the_sample():
    sample = parse_health(
        "d",
        {
            "app_up": True,
            "latency_ms": 3.0,
            "metrics": {
                'inference_latency_seconds{quantile="0.95"}': 0.031,
                "app_requests_total": 1200,
                'http_requests_total{code="500",path="/a \\"b\\""}': 3,
            },
        },
    )
    assert dict(sample.metrics) == {
        'inference_latency_seconds{quantile="0.95"}': 0.031,
        "app_requests_total": 1200.0,
        'http_requests_total{code="500",path="/a \\"b\\""}': 3.0,
    }
    assert all(type(v) is float for v in sample.metrics.values())
    with pytest.raises(TypeError):
        sample.metrics["x"] = 1.0  # type: ignore[index]  # frozen
    # An agent from before app metrics (no key) or one that sends null: no metrics, no error.
    assert dict(parse_health("d", {"app_up": True}).metrics) == {}
    assert dict(parse_health("d", {"app_up": True, "metrics": None}).metrics) == {}


def test_up_with_nothing_measured_is_no_data_not_a_full_sample():
    silent = parse_health("d", {"app_up": True, "restarts": 0, "crash_loop": False})
    assert silent.app_up and silent.has_no_data
    assert silent.latency_ms is None and silent.error_rate is None and silent.cpu_percent is None
    only_app = parse_health("d", {"app_up": True, "metrics": {"app_up": 1}})
    assert not only_app.has_no_data
    full = parse_health("d", {"app_up": True, "latency_ms": 3.0, "error_rate": 0.0})
    assert not full.has_no_data


@pytest.mark.parametrize(
    "metrics",
    [
        [],
        "app_up 1",
        {"a": "1"},
        {"a": None},
        {"a": True},
        {"a": [1]},
        {"a": {"b": 1}},
        {"a": float("nan")},
        {"a": float("inf")},
        {"a": 10**400},
        {"": 1},
        {"1a": 1},
        {"a b": 1},
        {"a{": 1},
        {"x" * 2000: 1},
        {f"m{i}": 1 for i in range(1001)},
    ],
)
def test_malformed_health_metrics_are_a_bad_response(metrics):
    with pytest.raises(DeviceRefusal) as info:
        parse_health("d", {"app_up": True, "metrics": metrics})
    assert info.value.code == "bad-response" and not info.value.retryable
    assert "health.metrics" in str(info.value)


def test_results_parse_the_protocol_examples():
    facts = Facts.parse(
        "orin-a-01",
        {
            "id": "orin-a-01",
            "hardware": "jetson-orin-nano",
            "arch": "arm64",
            "ram_mb": 7620,
            "disk_free_mb": 51234.5,
            "software": {"jetpack": "6.0"},
            "agent_version": "0.1.0",
            "current": "vision-2.4.1-1a2b3c4d",
            "previous": "vision-2.4.0-99aa00ff",
            "rollback_available": True,
            "releases": ["vision-2.4.0-99aa00ff", "vision-2.4.1-1a2b3c4d"],
            "state": "idle",
            "last_seq": 17,
            "app_running": True,
            "interrupted": None,
        },
    )
    assert facts.rollback_available and facts.last_seq == 17 and facts.disk_free_mb == 51234.5
    failed = ActivateResult.parse(
        "d",
        {"status": "start-failed", "release": "r", "previous": "p", "error": "e", "logs": ["x"]},
    )
    assert not failed.ok and failed.logs == ("x",) and failed.error == "e"
    rb = RollbackResult.parse(
        "d", {"status": "rolled-back", "release": "p", "from": "r", "app_healthy": False}
    )
    assert rb.from_release == "r" and not rb.ok and not rb.replayed


def dev(**kw: object) -> Device:
    base: dict[str, object] = dict(
        id="rpi-a-01",
        hardware="rpi4",
        arch=Arch.ARM64,
        group="plant-a",
        address="http://127.0.0.1:1",
        resources=Resources(4096, 32000),
    )
    base.update(kw)
    return Device(**base)  # type: ignore[arg-type]


def test_token_from_env_is_read_at_each_call():
    env = {"FG_TOK": "  s3cret\n"}
    tokens = TokenSource(environ=env)
    assert tokens.token_for(dev(token_env="FG_TOK")) == "s3cret"
    env["FG_TOK"] = "rotated"
    assert tokens.token_for(dev(token_env="FG_TOK")) == "rotated"


def test_missing_env_token_names_device_and_variable():
    with pytest.raises(DeviceRefusal) as info:
        TokenSource(environ={}).token_for(dev(token_env="FG_MISSING"))
    exc = info.value
    assert exc.code == "no-token" and not exc.retryable and exc.device_id == "rpi-a-01"
    assert "rpi-a-01" in str(exc) and "FG_MISSING" in str(exc)


def test_token_file_is_read_once_stripped_and_cached(tmp_path):
    path = tmp_path / "fleet.token"
    path.write_text("file-s3cret\n\n")
    tokens = TokenSource(base_dir=tmp_path)
    assert tokens.token_for(dev(token_file="fleet.token")) == "file-s3cret"
    path.write_text("changed")
    assert tokens.token_for(dev(token_file=str(path))) == "file-s3cret"
    assert "s3cret" not in repr(tokens)


def test_unusable_token_files_name_the_file_never_the_token(tmp_path):
    empty = tmp_path / "empty.token"
    empty.write_text("  \n")
    for name, why in ((tmp_path / "nope", "does not exist"), (empty, "is empty")):
        with pytest.raises(DeviceRefusal) as info:
            TokenSource().token_for(dev(token_file=str(name)))
        assert str(name) in str(info.value) and why in str(info.value)
    with pytest.raises(DeviceRefusal, match="neither token_env nor token_file"):
        TokenSource().token_for(dev())


def test_overrides_win():
    tokens = TokenSource(environ={}, overrides={"rpi-a-01": "o"})
    assert tokens.token_for(dev(token_env="FG_MISSING")) == "o"


def test_a_health_answer_survives_the_event_log_with_its_metrics():
    """Wire -> HealthSample -> event details (JSON) -> HealthSample, as resume reads it."""
    import json

    from fleetgate.engine.context import sample_dict, sample_from_dict

    sample = parse_health(
        "d",
        {
            "app_up": True,
            "latency_ms": 3.5,
            "error_rate": 0.002,
            "release": "app-2.0.0-1a2b3c4d",
            "metrics": {'inference_latency_seconds{quantile="0.95"}': 0.031, "app_up": 1},
        },
    )
    logged = json.loads(json.dumps(sample_dict(sample)))
    assert logged["metrics"] == {'inference_latency_seconds{quantile="0.95"}': 0.031, "app_up": 1}
    assert sample_from_dict("d", logged) == sample
    silent = parse_health("d", {"app_up": True})
    back = sample_from_dict("d", json.loads(json.dumps(sample_dict(silent))))
    assert back == silent and back is not None and back.has_no_data


def test_a_sample_logged_before_app_metrics_reads_as_having_none():
    old = {
        "app_up": True,
        "latency_ms": 3.0,
        "error_rate": 0.0,
        "cpu_percent": 10.0,
        "restarts": 0,
        "crash_loop": False,
        "release": "app-1.0.0-00000000",
    }
    from fleetgate.engine.context import sample_from_dict

    sample = sample_from_dict("d", old)
    assert sample is not None and dict(sample.metrics) == {} and sample.latency_ms == 3.0
    # A damaged entry keeps what is a number and drops the rest.
    odd = sample_from_dict("d", {**old, "metrics": {"a": 1, "b": "x", "c": True}})
    assert odd is not None and dict(odd.metrics) == {"a": 1.0}
    assert sample_from_dict("d", {**old, "metrics": [1, 2]}).metrics == {}  # type: ignore[union-attr]
