"""Fixtures for the simulator tests: ``channel`` runs a test over HTTP and in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sim_helpers import open_channel


@pytest.fixture(params=["http", "memory"])
async def channel(request: Any) -> AsyncIterator[tuple[Any, Any]]:
    async with open_channel(request.param) as pair:
        yield pair
