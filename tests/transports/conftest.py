"""The transport tests share the simulator tests' helpers (tests/sim/sim_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

SIM_TESTS = str(Path(__file__).resolve().parents[1] / "sim")
if SIM_TESTS not in sys.path:
    sys.path.insert(0, SIM_TESTS)
