"""``fleetgate deploy watch [ID] [--server URL]``: follow a deployment's events as they are
written, folded into its state here, with a live progress view on a terminal (phase, device
counts, the last action), one line per deployment-level event otherwise, or one JSON event per
line (``--json``). It ends when the deployment next waits for a human or has ended (with
``--until-end``: when it has ended), with that state's exit code.

Locally it reads the store's log (polling its tail); with ``--server`` it follows the
service's Server-Sent Events stream, which resumes after the last event seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from fleetgate.core.events import StoredEvent, event_to_dict
from fleetgate.core.machine import apply
from fleetgate.core.state import DeploymentState, DeviceStatus, Phase, exit_code

WAITING = {Phase.AWAITING_APPROVAL, Phase.HALTED}


async def _local(args: argparse.Namespace, dep: str) -> AsyncIterator[StoredEvent]:
    from fleetgate.store import Store

    async with Store.open(args.db) as store:
        after = 0
        while True:
            page = await store.events_page(dep, after)
            for ev in page:
                yield ev
                after = ev.seq
            if not page:
                await asyncio.sleep(0.5)


async def _remote(args: argparse.Namespace, dep: str) -> AsyncIterator[StoredEvent]:
    from fleetgate.cli.remote import remote

    r = remote(args)
    try:
        async for doc in r.events(dep, 0):
            yield StoredEvent(**doc)
    finally:
        await r.close()


async def _resolve(args: argparse.Namespace) -> tuple[str, int]:
    """The deployment (default: the latest) and the seq of its newest event now: the watch
    replays up to there before it may stop (a past wait is not the present one)."""
    from fleetgate.errors import InputError

    if args.server:
        from fleetgate.cli.remote import remote

        r = remote(args)
        try:
            dep = str(args.id) if args.id else await r.latest()
            return dep, int((await r.state(dep))["last_seq"])
        finally:
            await r.close()
    from fleetgate.cli.deploy_run import _latest
    from fleetgate.store import Store

    async with Store.open(args.db) as store:
        dep = str(args.id) if args.id else await _latest(store)
        last = await store.latest_seq(dep)
    if not last:
        raise InputError(f"no deployment {dep!r}")
    return dep, last


def _summary(s: DeploymentState) -> str:
    D = DeviceStatus
    counts = {
        "healthy": s.count(D.HEALTHY),
        "deployed": s.count(D.DEPLOYED),
        "failed": s.count(D.FAILED, D.DEPLOY_FAILED, D.DEGRADED),
        "rolled back": s.count(D.ROLLED_BACK),
        "skipped": s.count(D.SKIPPED, D.UNREACHABLE, D.EXCLUDED),
        "pending": s.count(D.PENDING),
    }
    parts = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    wave = f" wave {s.stage}/{s.waves_total}" if s.phase is Phase.ROLLOUT else ""
    return f"{s.phase.value}{wave}: {parts or 'no devices'}"


def _done(s: DeploymentState, until_end: bool) -> bool:
    return s.phase.terminal or (not until_end and s.phase in WAITING)


async def watch(args: argparse.Namespace) -> int:
    dep, now_seq = await _resolve(args)
    source = _remote(args, dep) if args.server else _local(args, dep)
    state = DeploymentState.empty(dep)
    live: Any = None
    if not args.json and sys.stderr.isatty():
        from rich.console import Console
        from rich.live import Live

        live = Live(console=Console(stderr=True), refresh_per_second=4)
        live.start()
    try:
        async for ev in source:
            state = apply(state, ev)
            if args.json:
                print(json.dumps(event_to_dict(ev), separators=(",", ":")), flush=True)
            elif live is not None:
                live.update(f"{dep}  {_summary(state)}\nlast: {state.last_action}")
            elif not ev.action.startswith("device."):
                print(f"{ev.ts[11:19]} {ev.action} ({ev.outcome}) - {_summary(state)}", flush=True)
            if ev.seq >= now_seq and _done(state, args.until_end):
                break
    finally:
        if live is not None:
            live.stop()
    if not args.json:
        print(f"deployment {dep}: {state.phase.value}")
    return exit_code(state)
