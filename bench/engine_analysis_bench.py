"""The canary analysis end to end on the virtual fleet: how often each case ends PASS,
INCONCLUSIVE or FAIL through the real engine (controls, baseline window, sampled soak, judge).

    .venv/bin/python bench/engine_analysis_bench.py [--runs N]

Each run is a fresh 60-device virtual fleet (seed = run number) with the test harness's
virtual clock (soaks take no wall time) and its policy (10 min canary soak, 5 min window).
Prints one line per case: ``case=<case> runs=<N> pass=<n> inconclusive=<n> fail=<n>``.
The figures are in docs/analysis.md. The statistics' own error rates under heavier noise are
``bench/analysis_bench.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "engine"))  # the engine test harness (virtual clock)

from engine_harness import harness  # noqa: E402

from fleetgate.core.model import Device, HealthSample  # noqa: E402
from fleetgate.transports.memory import MemoryTransport  # noqa: E402


class Surge(MemoryTransport):
    """+30 % latency and +2 pp errors on every device once the baselines are taken."""

    def __init__(self, inner: MemoryTransport, clock: Any, at: float) -> None:
        super().__init__(inner.fleet)
        self.clock, self.at = clock, at

    async def health(self, device: Device) -> HealthSample:
        s = await super().health(device)
        if self.clock.t >= self.at and s.app_up:
            s = replace(
                s,
                latency_ms=None if s.latency_ms is None else s.latency_ms * 1.3,
                error_rate=None if s.error_rate is None else s.error_rate + 0.02,
            )
        return s


CASES: dict[str, tuple[str, ...]] = {
    "none": (),
    "surge": (),
    "errors=3.5%": ("errors:rate=0.035,version=2.0.0",),
    "latency*1.4": ("latency:factor=1.4,version=2.0.0",),
    "latency*1.15": ("latency:factor=1.15,version=2.0.0",),
}


async def one(case: str, seed: int) -> str:
    with tempfile.TemporaryDirectory() as d:
        async with harness(Path(d), devices=60, seed=seed, faults=CASES[case]) as h:
            if case == "surge":
                inner = h.controller.transport
                assert isinstance(inner, MemoryTransport)
                # The window and the baselines come first; the surge starts with the soak.
                h.controller.transport = Surge(inner, h.clock, h.clock.t + 901)
            dep = await h.start()
            state = await h.controller.drive(dep)
            return state.canary_verdict


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    for case in CASES:
        got = Counter([await one(case, seed) for seed in range(args.runs)])
        print(
            f"case={case} runs={args.runs} pass={got['PASS']} "
            f"inconclusive={got['INCONCLUSIVE']} fail={got['FAIL']}"
        )


if __name__ == "__main__":
    asyncio.run(main())
