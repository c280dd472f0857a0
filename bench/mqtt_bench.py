"""MQTT channel benchmark: one deployment over MQTT against the same deployment over HTTP.

    .venv/bin/python bench/mqtt_bench.py [--devices 1000 10000] [--concurrency 200]
                                         [--broker mqtt://127.0.0.1:1883] [--timeout S]
                                         [--channels http mqtt]

For each fleet size, two runs — ``http`` then ``mqtt`` — each in a fresh worker process (so its
CPU time is its own) and a fresh temporary directory:

1. ``python -m fleetgate sim run --channel CH --devices N`` in its own process (``--broker``
   for mqtt: every virtual device holds its own connection to the broker); the worker waits
   for ``ready`` and kills that pid at the end.
2. A signed release of the example app (``bench/engine_bench.py``'s ``build_release``), a SQLite
   store with the sim's inventory, a ``Controller`` over ``HttpTransport`` (its router sends
   ``mqtt://`` devices to the ``MqttChannel``: one connection to the broker), concurrency C.
3. mqtt only, untimed: the controller connects to the broker and takes in every device's
   retained status (``warmup_s``, reported apart: a long-running controller has done it
   long before; one that connected that second would be answering pings behind N messages).
4. Timed: ``start`` + ``drive`` to AWAITING_APPROVAL (zero soak) + approval + ``drive`` to
   COMPLETE — the whole deployment. Wall (``perf_counter``), controller CPU (``process_time``),
   sim CPU and broker CPU (utime + stime from ``/proc/PID/stat``; the broker is the system
   Mosquitto, found by its pid file or ``pgrep -x mosquitto``: only read, never signalled).
5. Connections the broker held: ``$SYS/broker/clients/connected``, subscribed for the whole
   run and until one more value arrives after it (Mosquitto refreshes ``$SYS`` every 10 s by
   default); the highest value seen. Other clients of a shared broker count too: the table
   shows it for the HTTP run as well, the baseline.

The sim's groups are ``bench-a,bench-b,bench-c`` (device ids ``orin-a-…`` would collide, on a
shared broker, with another fleet's: two clients with one id take turns being disconnected).

Prints a table and, last, ONE JSON line with every run. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
POLICY: dict[str, Any] = {"allow_short_soak": True, "soak": {"canary": 0, "between_waves": 0}}
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    channel: str
    devices: int
    concurrency: int
    outcome: str = ""
    sim_ready_s: float = 0.0
    wall_s: float = 0.0
    controller_cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    broker_cpu_s: float | None = None
    broker_connections_max: int | None = None
    warmup_s: float | None = None  # mqtt: connect + every device's retained status received
    presences: int | None = None
    error: str = ""


def cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def broker_pid() -> int | None:
    """The system Mosquitto: its pid file (mosquitto.conf ``pid_file``), else the one
    ``pgrep -x mosquitto`` finds when there is exactly one (tests start their own on free
    ports; with several we cannot tell which serves 1883)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/run/mosquitto/mosquitto.pid").read_text().strip())
    out = subprocess.run(["pgrep", "-x", "mosquitto"], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    return pids[0] if len(pids) == 1 else None


class Sim:
    """``fleetgate sim run`` in its own process; ``stop()`` ends exactly that pid."""

    def __init__(self, channel: str, devices: int, broker: str, work: Path) -> None:
        self.inventory = work / "fleet.yaml"
        args = ["--channel", channel] + (["--broker", broker] if channel == "mqtt" else [])
        self._log = (work / "sim.stderr").open("wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetgate", "sim", "run", "--devices", str(devices),
             "--registry-out", str(self.inventory), "--seed", "1",
             "--groups", "bench-a,bench-b,bench-c", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=work,
            start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.strip() == b"ready":
                break
        else:
            self.stop()
            raise RuntimeError(f"sim exited before ready: {(work / 'sim.stderr').read_text()}")
        self.ready_s = time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)  # 10,000 links say goodbye
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


async def watch_connections(broker: str, seen: list[int]) -> None:
    """Append every fresh ``$SYS/broker/clients/connected`` value (not the retained one from
    before the run) to ``seen``, until cancelled."""
    import aiomqtt

    from fleetgate.core.mqttwire import parse_broker

    address, _ = parse_broker(broker)
    async with aiomqtt.Client(address.host, address.port) as client:
        await client.subscribe("$SYS/broker/clients/connected")
        async for message in client.messages:
            payload = message.payload
            if not message.retain and isinstance(payload, bytes) and payload.isdigit():
                seen.append(int(payload))


async def one_more(seen: list[int], watcher: asyncio.Task[None], within: float = 15.0) -> None:
    """Wait for one more value than there is now (the fleet still connected), then stop."""
    have, deadline = len(seen), time.monotonic() + within
    while len(seen) <= have and time.monotonic() < deadline and not watcher.done():
        await asyncio.sleep(0.2)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await watcher


async def deploy(run: Run, sim: Sim, work: Path, broker: str) -> None:
    import aiomqtt  # (it sets its logger's level when imported: set ours after)
    from engine_bench import build_release

    from fleetgate.config.policy_file import policy_from_dict
    from fleetgate.core.state import Phase
    from fleetgate.engine.service import Controller, ControllerConfig
    from fleetgate.registry.loader import load_inventory
    from fleetgate.store import Store
    from fleetgate.transports.http import HttpTransport
    from fleetgate.transports.tokens import TokenSource

    # The sim's stderr is a file; ours would fill with aiomqtt's reconnect chatter.
    logging.getLogger(aiomqtt.client.MQTT_LOGGER.name).setLevel(logging.ERROR)
    bundle, pub = build_release(work)
    policy = policy_from_dict(POLICY, "bench policy")
    c = run.concurrency
    seen: list[int] = []
    watcher = asyncio.create_task(watch_connections(broker, seen))
    mosquitto = broker_pid()
    async with (
        Store.open(f"sqlite+aiosqlite:///{work}/fg.db") as store,
        HttpTransport(TokenSource(), concurrency=c) as transport,
    ):
        devices = load_inventory(sim.inventory)
        await store.replace_devices(devices)
        if run.channel == "mqtt":
            await warm_up(run, transport, devices)
        ctl = Controller(store, transport, ControllerConfig(work / "blobs", pub, concurrency=c))
        w0, c0, s0 = time.perf_counter(), time.process_time(), cpu_of(sim.proc.pid)
        b0 = cpu_of(mosquitto) if mosquitto else None
        dep = await ctl.start(bundle, policy, policy_doc=POLICY, actor="bench")
        state = await ctl.drive(dep)
        if state.phase is Phase.AWAITING_APPROVAL:
            await ctl.record_human(dep, "approval.granted", "bench", comment="benchmark")
            state = await ctl.drive(dep)
        run.wall_s = time.perf_counter() - w0
        run.controller_cpu_s = time.process_time() - c0
        run.sim_cpu_s = cpu_of(sim.proc.pid) - s0
        if mosquitto and b0 is not None:
            run.broker_cpu_s = cpu_of(mosquitto) - b0
        run.outcome = state.phase.value + (f": {state.halt_reason}" if state.halt_reason else "")
        if state.phase is not Phase.COMPLETE:
            # Which devices were set aside, and why: counted by event and reason (the most
            # frequent first), so a PARTIAL outcome explains itself.
            why: Counter[str] = Counter()
            for e in await store.events(dep):
                if e.device_id is None or e.outcome == "ok":
                    continue
                reason = e.details.get("reason") or e.details.get("error") or e.details.get("code")
                why[f"{e.action} ({e.outcome}): {str(reason)[:120]}"] += 1
            run.error = "; ".join(f"{n} x {w}" for w, n in why.most_common(4))
    await one_more(seen, watcher)
    run.broker_connections_max = max(seen) if seen else None


async def warm_up(run: Run, transport: Any, devices: list[Any]) -> None:
    """Open the controller's broker connection and wait until it holds every device's retained
    status (at most 60 s): the state of a controller that has been running, not one that
    connected this second and is still taking N status messages in (reported apart)."""
    t0 = time.perf_counter()
    await transport.ping(devices[0])

    def known() -> int:
        return sum(1 for d in devices if transport.mqtt.presence(d.id) is not None)

    while known() < len(devices) and time.perf_counter() - t0 < 60:
        await asyncio.sleep(0.2)
    run.warmup_s = time.perf_counter() - t0
    run.presences = known()


def worker(channel: str, devices: int, concurrency: int, broker: str) -> Run:
    run = Run(channel, devices, concurrency)
    with tempfile.TemporaryDirectory(prefix="fg-mqtt-bench-") as tmp:
        work = Path(tmp)
        sim = Sim(channel, devices, broker, work)
        run.sim_ready_s = sim.ready_s
        try:
            asyncio.run(deploy(run, sim, work, broker))
        except Exception as exc:  # a benchmark reports what broke
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            sim.stop()
    return run


def run_worker(channel: str, n: int, args: argparse.Namespace) -> Run:
    cmd = [sys.executable, __file__, "--worker", channel, str(n), str(args.concurrency)]
    proc = subprocess.Popen([*cmd, "--broker", args.broker], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate()
    last = (out.strip().splitlines() or ["{}"])[-1]
    try:
        return Run(**json.loads(last))
    except (ValueError, TypeError):
        return Run(channel, n, args.concurrency, error=f"worker exit {proc.returncode}: {last}")


def report(runs: list[Run]) -> None:
    head = (
        f"{'devices':>8} {'channel':<8}{'outcome':<10}{'wall s':>8}{'ctl CPU s':>11}"
        f"{'sim CPU s':>11}{'broker CPU s':>14}{'broker conns':>14}{'sim ready s':>13}"
    )
    print(head)
    for r in runs:
        broker = "-" if r.broker_cpu_s is None else f"{r.broker_cpu_s:.2f}"
        conns = "-" if r.broker_connections_max is None else f"{r.broker_connections_max:,}"
        print(
            f"{r.devices:>8,} {r.channel:<8}{r.outcome.split(':')[0]:<10}{r.wall_s:>8.2f}"
            f"{r.controller_cpu_s:>11.2f}{r.sim_cpu_s:>11.2f}{broker:>14}{conns:>14}"
            f"{r.sim_ready_s:>13.1f}"
        )
        if r.warmup_s is not None:
            print(f"{'':>9}controller warm-up {r.warmup_s:.1f} s ({r.presences:,} statuses)")
        if r.outcome and not r.outcome.startswith("COMPLETE"):
            print(f"{'':>9}{r.outcome}")
        if r.error:
            print(f"{'':>9}ERROR: {r.error}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--channels", nargs="+", choices=("http", "mqtt"), default=["http", "mqtt"])
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--worker", nargs=3, metavar=("CHANNEL", "N", "C"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        channel, n, c = args.worker
        print(json.dumps(asdict(worker(channel, int(n), int(c), args.broker))))
        return
    runs = [run_worker(ch, n, args) for n in args.devices for ch in args.channels]
    report(runs)
    print(json.dumps({"runs": [asdict(r) for r in runs]}))


if __name__ == "__main__":
    main()
