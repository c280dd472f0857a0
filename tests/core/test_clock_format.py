"""fleetgate's stored time format: ``utc_now_iso`` writes exactly what ``to_iso`` does."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from fleetgate.clock import parse_iso, to_iso, utc_now_iso

STORED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")


def test_now_is_in_the_stored_format_and_reads_back_as_the_same_instant() -> None:
    before = datetime.now(timezone.utc)
    text = utc_now_iso()
    after = datetime.now(timezone.utc)
    assert STORED.match(text), text
    moment = parse_iso(text)
    assert before <= moment <= after
    assert to_iso(moment) == text  # the fast path and the checked one agree


def test_an_instant_on_a_whole_second_keeps_its_microseconds() -> None:
    moment = datetime(2026, 11, 29, 21, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert to_iso(moment) == "2026-11-29T19:00:00.000000+00:00"
    assert STORED.match(to_iso(moment))
