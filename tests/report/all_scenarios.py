"""Every hand-built log the invariant tests run on: ``report_scenarios`` and the canary rounds
judged by analysis (``analysis_scenarios``, issue 11)."""

from __future__ import annotations

from analysis_scenarios import SCENARIOS as ANALYSIS_SCENARIOS
from report_scenarios import SCENARIOS as BASE_SCENARIOS

SCENARIOS = {**BASE_SCENARIOS, **ANALYSIS_SCENARIOS}
