"""``EngineContext.retrying``: the spec's "3 attempts max", counted exactly.

The first attempt runs outside stamina (issue 12: its retry context cost ~10 µs per call); a
retryable first failure is handed to stamina as its first attempt. These tests pin what that
must not change: how many times the device is called, the attempt number returned, what
propagates, and that a retry still waits its backoff.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from fleetgate.core.policy import RetryPolicy
from fleetgate.engine.context import EngineContext
from fleetgate.errors import FleetgateError

BACKOFF_S = 0.05


def ctx(backoff_s: float = BACKOFF_S) -> Any:
    return SimpleNamespace(policy=SimpleNamespace(retries=RetryPolicy(3, backoff_s)))


class Flaky:
    """Fails with ``errors`` in order, then answers ``"ok"``; counts every call."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def busy() -> FleetgateError:
    return FleetgateError("agent busy", device_id="d1", retryable=True)


async def test_a_first_answer_is_one_call_and_attempt_one() -> None:
    call = Flaky()
    assert await EngineContext.retrying(ctx(), call) == ("ok", 1)
    assert call.calls == 1


@pytest.mark.parametrize("failures", [1, 2])
async def test_retryable_failures_are_retried_and_counted(failures: int) -> None:
    call = Flaky(*(busy() for _ in range(failures)))
    started = time.monotonic()
    assert await EngineContext.retrying(ctx(), call) == ("ok", failures + 1)
    assert call.calls == failures + 1
    # Each retry waited (stamina's jittered backoff: at least wait_initial per retry).
    assert time.monotonic() - started >= failures * BACKOFF_S * 0.9


async def test_three_failures_give_up_with_the_last_error_after_exactly_three_calls() -> None:
    errors = [busy(), busy(), busy(), busy()]
    call = Flaky(*errors)
    with pytest.raises(FleetgateError) as info:
        await EngineContext.retrying(ctx(), call)
    assert info.value is errors[2]
    assert call.calls == 3


async def test_attempts_one_never_retries() -> None:
    first = busy()
    call = Flaky(first)
    with pytest.raises(FleetgateError) as info:
        await EngineContext.retrying(ctx(), call, attempts=1)
    assert info.value is first and call.calls == 1


async def test_a_refusal_is_not_retried() -> None:
    refusal = FleetgateError("bad signature", device_id="d1", retryable=False)
    call = Flaky(refusal)
    with pytest.raises(FleetgateError) as info:
        await EngineContext.retrying(ctx(), call)
    assert info.value is refusal and call.calls == 1


async def test_a_refusal_after_a_retry_stops_at_once() -> None:
    refusal = FleetgateError("bad signature", device_id="d1", retryable=False)
    call = Flaky(busy(), refusal)
    with pytest.raises(FleetgateError) as info:
        await EngineContext.retrying(ctx(), call)
    assert info.value is refusal and call.calls == 2


async def test_cancellation_passes_through_the_first_attempt() -> None:
    call = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await EngineContext.retrying(ctx(), call)
    assert call.calls == 1


async def test_an_unexpected_error_is_not_retried() -> None:
    call = Flaky(KeyError("x"))
    with pytest.raises(KeyError):
        await EngineContext.retrying(ctx(), call)
    assert call.calls == 1
