"""The MQTT demo's real agents enrol themselves (docs/enrolment.md), as a real fleet does.

The API is served in-process by ``api.embedded.api_in_process``, which the CLI hands to
``run_demo`` (the simulator does not import the API layer). ``DemoEnrolment`` is the
operator's and the device's side: for each agent, one single-use token for its group, then the real
``fleetgate agent enroll`` CLI (a subprocess, as on a device) before ``agent run``. The tokens
do not auto-accept: the agents arrive ``pending`` and the demo accepts exactly them, the step an
operator takes with ``fleetgate registry accept``, so the demo shows the whole life cycle.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fleetgate.core.model import Device, Monitoring
from fleetgate.errors import FleetgateError

TOKEN_TTL_S = 600  # long enough for the demo's start, short enough not to matter if left


class DemoEnrolment:
    """Called by ``real_agents`` for each agent, before it runs; then ``accept`` them all."""

    def __init__(
        self, store: Any, server: str, broker: str, keys: Path, say: Callable[[str], None]
    ) -> None:
        self.store, self.server, self.broker, self.keys, self.say = (
            store,
            server,
            broker,
            keys,
            say,
        )
        self.enrolled: list[str] = []

    async def __call__(self, dev_id: str, config: Path, group: str) -> None:
        from fleetgate.clock import utc_now_iso
        from fleetgate.engine.enrolment import create_token

        token, rec = await create_token(
            self.store,
            group=group,
            ttl_s=TOKEN_TTL_S,
            auto_accept=False,
            actor="demo",
            now=utc_now_iso(),
        )
        address = f"{self.broker}/{dev_id}"
        # A device keeps its key: the id is bound to it in the store (an id belongs to its
        # key), so a later demo run over the same store must enrol with the same key.
        kept = self.keys / f"{dev_id}.key"
        key = config.parent / "device.key"
        if kept.exists():
            shutil.copy2(kept, key)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleetgate",
            "agent",
            "enroll",
            "--server",
            self.server,
            "--token",
            token,
            "--id",
            dev_id,
            "--address",
            address,
            "--hardware",
            "gateway",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        raw_out, raw_err = await proc.communicate()
        out = raw_out.decode(errors="replace").strip()  # "enrolled ID in group G: pending"
        if proc.returncode != 0:
            err = raw_err.decode(errors="replace").strip().splitlines()
            why = err[-1] if err else out
            if "(HTTP 409)" in why:
                why += (
                    f"; the store knows {dev_id} by a key no longer in {self.keys}:"
                    " run it on a fresh store (fleetgate --db URL demo …)"
                )
            raise FleetgateError(f"demo: {dev_id}: fleetgate agent enroll failed: {why}")
        self.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not kept.exists():
            shutil.copy2(key, kept)
        self.enrolled.append(dev_id)
        self.say(f"  fleetgate enroll create --group {group} --expires 10m: {rec.id} (single use)")
        self.say(
            f"  fleetgate agent enroll --server {self.server} --token fge_… --id {dev_id} "
            f"--address {address}: {out or 'done'}"
        )

    async def accept(self) -> list[Device]:
        """``registry accept`` the demo's agents (only them), and return their records."""
        from fleetgate.clock import utc_now_iso
        from fleetgate.engine.enrolment import accept

        ids = await accept(
            self.store, self.enrolled, all_pending=False, actor="demo", now=utc_now_iso()
        )
        # The demo's agents report app health, error rate and latency: the inventory says so
        # (as over HTTP), so the plans, and the scenarios' endings, are the same on both.
        devices = [await self.store.get_device(i) for i in ids]
        agents = [replace(d, monitoring=Monitoring.HIGH) for d in devices if d is not None]
        await self.store.upsert_devices(agents)
        self.say(f"  fleetgate registry accept {' '.join(ids)}: active (monitoring high)")
        return agents
