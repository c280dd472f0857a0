"""The report from the log alone: events stored in SQLite and read back give the same report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from all_scenarios import SCENARIOS
from report_scenarios import DEP

from fleetgate.report.session import build_report, render_report_md
from fleetgate.store import Store


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_report_is_identical_from_stored_events(name: str, tmp_path: Path) -> None:
    events = SCENARIOS[name]()
    async with Store.open(f"sqlite+aiosqlite:///{tmp_path}/fg.db") as s:
        await s.append_many(events)
        stored = await s.events(DEP)
        assert (await s.verify()).ok
    assert len(stored) == len(events)
    live = build_report(DEP, events)
    from_log = build_report(DEP, stored)
    assert from_log == live
    assert json.dumps(from_log) == json.dumps(live)  # key order too
    assert render_report_md(from_log) == render_report_md(live)
