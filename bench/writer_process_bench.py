"""The price of a second process: the store writer, or device calls, behind a socket (issue 12 #5).

    .venv/bin/python bench/writer_process_bench.py [--devices 1000] [--repeat 3]
                                                   [--messages 20000] [--concurrency 200]

Would moving the store writer, or the device calls, into a second process take CPU off the
controller's event loop? Only if what the event loop pays to hand the work over is less than
the work. This measures both sides on this machine, in one run:

1. **Real batches.** A deployment and a fleet-wide rollback of ``--devices`` virtual devices
   (``bench/engine_bench.py``'s sim, store and ``Controller``, SQLite) with ``Store.append_many``
   wrapped to keep a copy of every batch the recorder's group commit hands it: the events, their
   details and the batch sizes are the engine's own.
2. **In-process append** (today): the batches replayed, in order and one at a time (the
   recorder's flusher is serial too), with the lease's fence and the deployment's last seq where
   the engine gave them, into a fresh SQLite store in this process. CPU by thread from
   ``/proc/self/task``: the event loop's (normalise, seal, SQLAlchemy, futures) and aiosqlite's
   (SQLite itself), in µs per event. And the in-process alternative to a second process: the
   same appends (checks, seal, rows) written with the standard library's ``sqlite3`` in one
   thread hop per batch (``bench/lean_append.py``: no SQLAlchemy, one hop instead of one per
   statement); and, to tell the two savings apart, the store's own SQLAlchemy Core statements on
   a synchronous connection in one thread hop per batch (``append_sa_sync``).
3. **Writer process**: the same batches sent to a child process over a Unix socketpair
   (asyncio streams, 4-byte length + pickle of the ``Event`` list), awaiting its answer (the last
   seq) before the next batch, as the recorder awaits the commit. ``ack``: the child unpickles and
   answers at once (the handing over alone); ``write``: the child appends the batch to its own
   SQLite store with ``Store.append_many`` and answers with the last seq (a working prototype of
   the writer process: ``bench/writer_child.py``); ``lean``: the child writes with
   ``bench/lean_append.py`` instead. This process's CPU (all of it is the sender's) per event,
   the child's, and the wall time.
4. **Device calls across a socket** (a calls shard): ``--messages`` small JSON requests (what
   the controller would tell a shard: device, call, seq) each answered by the child with a small
   JSON body (the sim's health answer), 1 in flight and ``--concurrency`` in flight over one
   stream with request ids. This process's CPU per round trip is what every device call would
   cost the event loop on top of the remaining work, against what a shard would take off it
   (the lean HTTP client's CPU per call: ``bench/floor_bench.py``'s ``lean`` line).

Every measurement runs ``--repeat`` times; the figure is the minimum (least disturbed), all are
shown. Ends with one JSON line. Nothing here asserts: it prints figures (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_bench as eb
from lean_append import LeanSqliteSink, SaSyncSink
from writer_child import RemoteSink

from fleetgate.core.events import Event

FRAME = struct.Struct("!I")
SEQ = struct.Struct("!q")
HEALTH = json.dumps(
    {"device_id": "dev-00000", "status": "ok", "app_up": True, "cpu": 0.12, "mem_mb": 41.5}
).encode()


# -- 1. the engine's own batches -----------------------------------------------------------------
class Batch(list[Event]):
    """A batch as the engine appended it; ``fenced``: with the lease's fence and the
    deployment's last seq (the recorder's appends), which the replays check as well."""

    fenced = False


def capture(devices: int) -> list[Batch]:
    """Every batch ``Store.append_many`` is given during a deployment + rollback."""
    from fleetgate.store import Store

    batches: list[Batch] = []
    original = Store.append_many

    async def keep(self: Store, new: Any, **kw: Any) -> Any:
        batch = Batch(new)
        batch.fenced = kw.get("fence") is not None
        batches.append(batch)
        return await original(self, new, **kw)

    Store.append_many = keep  # type: ignore[method-assign]
    res = eb.RunResult(devices, 200)
    try:
        with tempfile.TemporaryDirectory(prefix="fg-writer-bench-") as tmp:
            sim = eb.SimProcess(devices, Path(tmp))
            try:
                asyncio.run(eb.drive_run(res, sim, Path(tmp), True, "sqlite"))
            finally:
                sim.stop()
    finally:
        Store.append_many = original  # type: ignore[method-assign]
    if res.error or not res.rollback_outcome.startswith("ROLLED_BACK"):
        raise SystemExit(f"capture run failed: {res.error or res.outcome} {res.rollback_outcome}")
    return batches


# -- 2. in process -------------------------------------------------------------------------------
def advance(last: int, batch: Batch, end_seq: int, dep: str) -> int:
    """The deployment's newest seq once ``batch`` was stored ending at ``end_seq``."""
    first = end_seq - len(batch) + 1
    for i, ev in enumerate(batch):
        if ev.deployment_id == dep:
            last = first + i
    return last


async def replay(sink: Any, batches: list[Batch], fence: Any) -> None:
    """Append the batches through ``sink`` in order, the recorder's ones fenced and checked
    against the deployment's newest seq, as the recorder appends them."""
    last = 0
    for batch in batches:
        if batch.fenced:
            stored = await sink.append_many(batch, fence=fence, expect_last=last)
        else:
            stored = await sink.append_many(batch)
        last = advance(last, batch, stored[-1].seq, fence.deployment_id)


async def fence_for(store: Any, batches: list[Batch]) -> Any:
    """A lease on the captured deployment in a fresh store: the fence the replays append with."""
    dep = next(ev.deployment_id for b in batches if b.fenced for ev in b)
    lease = await store.acquire_lease(dep, "bench", 3600.0)
    assert lease is not None
    return lease.fence


async def append_in_process(batches: list[Batch], url: str) -> dict[str, float]:
    """Today's path: ``Store.append_many`` (SQLAlchemy Core over aiosqlite), fenced as the
    recorder's appends are."""
    from fleetgate.store import Store

    async with Store.open(url) as store:
        fence = await fence_for(store, batches)
        th0, c0, w0 = eb.thread_cpu(), time.process_time(), time.perf_counter()
        await replay(store, batches, fence)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        main, store_cpu = eb.split_threads(th0, eb.thread_cpu())
    return {"wall_s": wall, "cpu_s": cpu, "main_s": main, "store_s": store_cpu}


async def append_raw(batches: list[Batch], url: str, sa: bool = False) -> dict[str, float]:
    """The alternative to a second process: the same appends, one ``to_thread`` hop per batch
    into the standard library's sqlite3 (the normalising and sealing run in that thread)."""
    from fleetgate.store import Store

    async with Store.open(url) as store:  # the schema, migrated; and the lease
        fence = await fence_for(store, batches)
    path = url.partition(":///")[2]
    sink = SaSyncSink(path) if sa else LeanSqliteSink(path)
    th0, c0, w0 = eb.thread_cpu(), time.process_time(), time.perf_counter()
    await replay(sink, batches, fence)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    after = eb.thread_cpu()
    await sink.close()
    main, _ = eb.split_threads(th0, after)
    return {"wall_s": wall, "cpu_s": cpu, "main_s": main, "store_s": cpu - main}


# -- 3./4. the child process ---------------------------------------------------------------------
async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
    return await reader.readexactly(n)


async def child_main(fd: int, mode: str) -> None:
    """Serve one sender on the inherited socket until it closes; last, write back this process's
    CPU seconds (a frame of its own)."""
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    c0 = time.process_time()
    try:
        while True:
            (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
            if n == 0:
                break
            payload = await reader.readexactly(n)
            if mode == "rpc":
                req_id, _req = payload[:8], json.loads(payload[8:])
                writer.write(FRAME.pack(8 + len(HEALTH)) + req_id + HEALTH)
                continue
            batch: list[Event] = pickle.loads(payload)
            writer.write(FRAME.pack(SEQ.size) + SEQ.pack(len(batch)))
        cpu = time.process_time() - c0
        writer.write(FRAME.pack(8) + struct.pack("!d", cpu))
        await writer.drain()
    finally:
        writer.close()


class Child:
    """This file run as ``--child MODE FD`` over one end of a socketpair."""

    def __init__(self, mode: str) -> None:
        mine, theirs = socket.socketpair()
        self.sock = mine
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", mode, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(sock=self.sock)

    @staticmethod
    async def finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        """Tell the child to stop; its CPU seconds."""
        writer.write(FRAME.pack(0))
        (cpu,) = struct.unpack("!d", await _read_frame(reader))
        writer.close()
        return float(cpu)

    def wait(self) -> None:
        self.proc.wait(30)


async def send_batches(batches: list[Batch]) -> dict[str, float]:
    """The batches to a child that only answers (the handing over alone)."""
    child = Child("ack")
    try:
        reader, writer = await child.open()
        c0, w0 = time.process_time(), time.perf_counter()
        for batch in batches:
            payload = pickle.dumps(list(batch), protocol=pickle.HIGHEST_PROTOCOL)
            writer.write(FRAME.pack(len(payload)) + payload)
            SEQ.unpack(await _read_frame(reader))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        child_cpu = await Child.finish(reader, writer)
    finally:
        child.wait()
    return {"wall_s": wall, "cpu_s": cpu, "child_cpu_s": child_cpu}


async def write_remote(batches: list[Batch], url: str, lean: bool) -> dict[str, float]:
    """The batches through ``writer_child.RemoteSink``: the prototype writer process (``lean``:
    writing with ``lean_append.append_sync``)."""
    from fleetgate.store import Store

    async with Store.open(url) as store:
        fence = await fence_for(store, batches)
    sink = RemoteSink(url, lean=lean)
    try:
        await sink.start()
        k0, c0, w0 = sink.cpu_s(), time.process_time(), time.perf_counter()
        await replay(sink, batches, fence)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        child_cpu = sink.cpu_s() - k0
    finally:
        await sink.close()
    return {"wall_s": wall, "cpu_s": cpu, "child_cpu_s": child_cpu}


async def round_trips(messages: int, concurrency: int) -> dict[str, float]:
    """``messages`` small JSON requests, ``concurrency`` in flight, answered by the child."""
    child = Child("rpc")
    try:
        reader, writer = await child.open()
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[Any]] = {}

        async def dispatch() -> None:
            while True:
                frame = await _read_frame(reader)
                (rid,) = SEQ.unpack(frame[:8])
                waiting.pop(rid).set_result(json.loads(frame[8:]))

        next_id = 0

        async def call(device: str, name: str, seq: int) -> Any:
            nonlocal next_id
            next_id += 1
            fut = loop.create_future()
            waiting[next_id] = fut
            body = json.dumps({"device": device, "call": name, "seq": seq}).encode()
            writer.write(FRAME.pack(8 + len(body)) + SEQ.pack(next_id) + body)
            return await fut

        async def worker(first: int, step: int) -> None:
            for i in range(first, messages, step):
                await call(f"dev-{i % 100_000:05d}", "health", i)

        reading = asyncio.create_task(dispatch())
        await worker(0, messages)  # warm up: one message (first=0, step=messages)
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(k, concurrency) for k in range(concurrency)))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        reading.cancel()
        # the reader task holds the stream: hand the stop frame over directly
        writer.write(FRAME.pack(0))
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        (child_cpu,) = struct.unpack("!d", await _read_frame(reader))
        writer.close()
    finally:
        child.wait()
    return {"wall_s": wall, "cpu_s": cpu, "child_cpu_s": child_cpu}


# -- the run --------------------------------------------------------------------------------------
def best(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    return min(runs, key=lambda r: r[key])


def repeat(
    n: int, make: Callable[[], Coroutine[Any, Any, dict[str, float]]]
) -> list[dict[str, float]]:
    return [asyncio.run(make()) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, fd = args.child
        asyncio.run(child_main(int(fd), mode))
        return
    print(
        f"fleetgate writer-process bench ({eb.revision()}): {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    batches = capture(args.devices)
    events = sum(len(b) for b in batches)
    sizes = sorted(len(b) for b in batches)
    payload = sum(len(pickle.dumps(list(b), protocol=5)) for b in batches)
    print(
        f"captured {len(batches):,} batches, {events:,} events from a {args.devices:,}-device "
        f"deployment + rollback: batch size median {sizes[len(sizes) // 2]}, max {sizes[-1]}; "
        f"{payload / events:.0f} bytes of pickle per event",
        flush=True,
    )

    def fresh_url(tmp: str, i: int) -> str:
        return f"sqlite+aiosqlite:///{tmp}/w{i}.db"

    with tempfile.TemporaryDirectory(prefix="fg-writer-bench-") as tmp:
        count = iter(range(1_000_000))
        inproc = repeat(
            args.repeat, lambda: append_in_process(batches, fresh_url(tmp, next(count)))
        )
        raw = repeat(args.repeat, lambda: append_raw(batches, fresh_url(tmp, next(count))))
        sa = repeat(args.repeat, lambda: append_raw(batches, fresh_url(tmp, next(count)), True))
        ack = repeat(args.repeat, lambda: send_batches(batches))
        write = repeat(
            args.repeat, lambda: write_remote(batches, fresh_url(tmp, next(count)), False)
        )
        write_lean = repeat(
            args.repeat, lambda: write_remote(batches, fresh_url(tmp, next(count)), True)
        )
    one = repeat(args.repeat, lambda: round_trips(min(args.messages, 5000), 1))
    many = repeat(args.repeat, lambda: round_trips(args.messages, args.concurrency))

    def us(x: float, n: int) -> float:
        return round(x / n * 1e6, 1)

    ip, ak, wr = best(inproc, "cpu_s"), best(ack, "cpu_s"), best(write, "cpu_s")
    rw, wl, sy = best(raw, "cpu_s"), best(write_lean, "cpu_s"), best(sa, "cpu_s")
    o1, om = best(one, "cpu_s"), best(many, "cpu_s")
    n1 = min(args.messages, 5000)
    out = {
        "devices": args.devices,
        "batches": len(batches),
        "events": events,
        "pickle_bytes_per_event": round(payload / events, 1),
        "inproc_main_us_per_event": us(ip["main_s"], events),
        "inproc_store_thread_us_per_event": us(ip["store_s"], events),
        "inproc_process_us_per_event": us(ip["cpu_s"], events),
        "inproc_wall_s": round(ip["wall_s"], 3),
        "raw_main_us_per_event": us(rw["main_s"], events),
        "raw_thread_us_per_event": us(rw["store_s"], events),
        "raw_process_us_per_event": us(rw["cpu_s"], events),
        "raw_wall_s": round(rw["wall_s"], 3),
        "sa_sync_main_us_per_event": us(sy["main_s"], events),
        "sa_sync_thread_us_per_event": us(sy["store_s"], events),
        "sa_sync_process_us_per_event": us(sy["cpu_s"], events),
        "sa_sync_wall_s": round(sy["wall_s"], 3),
        "ack_sender_us_per_event": us(ak["cpu_s"], events),
        "ack_wall_s": round(ak["wall_s"], 3),
        "write_sender_us_per_event": us(wr["cpu_s"], events),
        "write_child_us_per_event": us(wr["child_cpu_s"], events),
        "write_wall_s": round(wr["wall_s"], 3),
        "write_lean_sender_us_per_event": us(wl["cpu_s"], events),
        "write_lean_child_us_per_event": us(wl["child_cpu_s"], events),
        "write_lean_wall_s": round(wl["wall_s"], 3),
        "rpc1_sender_us_per_msg": us(o1["cpu_s"], n1),
        "rpc1_rtt_us": us(o1["wall_s"], n1),
        "rpc_sender_us_per_msg": us(om["cpu_s"], args.messages),
        "rpc_child_us_per_msg": us(om["child_cpu_s"], args.messages),
        "rpc_concurrency": args.concurrency,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(
        "store writer, µs per event (min of "
        f"{args.repeat}): in process: event loop {out['inproc_main_us_per_event']}, aiosqlite "
        f"thread {out['inproc_store_thread_us_per_event']}, process "
        f"{out['inproc_process_us_per_event']} (wall {ip['wall_s']:.2f} s)"
    )
    print(
        f"   in process, sqlite3 in one thread hop per batch: event loop "
        f"{out['raw_main_us_per_event']}, thread {out['raw_thread_us_per_event']}, process "
        f"{out['raw_process_us_per_event']} (wall {rw['wall_s']:.2f} s)"
    )
    print(
        f"   in process, SQLAlchemy Core on sqlite3 in one thread hop per batch: event loop "
        f"{out['sa_sync_main_us_per_event']}, thread {out['sa_sync_thread_us_per_event']}, "
        f"process {out['sa_sync_process_us_per_event']} (wall {sy['wall_s']:.2f} s)"
    )
    print(
        f"   to a child that only answers: sender {out['ack_sender_us_per_event']} "
        f"(wall {ak['wall_s']:.2f} s); to a child that writes: sender "
        f"{out['write_sender_us_per_event']}, child {out['write_child_us_per_event']} "
        f"(wall {wr['wall_s']:.2f} s); to a child writing with sqlite3: sender "
        f"{out['write_lean_sender_us_per_event']}, child {out['write_lean_child_us_per_event']} "
        f"(wall {wl['wall_s']:.2f} s)"
    )
    for name, runs, key in (
        ("in process (process CPU)", inproc, "cpu_s"),
        ("in process, sqlite3 (process CPU)", raw, "cpu_s"),
        ("in process, SQLAlchemy sync (process CPU)", sa, "cpu_s"),
        ("to a child, ack (sender CPU)", ack, "cpu_s"),
        ("to a child, write (sender CPU)", write, "cpu_s"),
        ("to a child, write (child CPU)", write, "child_cpu_s"),
        ("to a child, sqlite3 (sender CPU)", write_lean, "cpu_s"),
        ("to a child, sqlite3 (child CPU)", write_lean, "child_cpu_s"),
    ):
        print(f"   all runs, {name}: " + ", ".join(f"{us(r[key], events)}" for r in runs))
    print(
        f"device calls across a socket: 1 in flight: sender {out['rpc1_sender_us_per_msg']} µs "
        f"CPU per round trip, {out['rpc1_rtt_us']} µs wall; {args.concurrency} in flight: sender "
        f"{out['rpc_sender_us_per_msg']} µs, child {out['rpc_child_us_per_msg']} µs per message"
    )
    print(
        "   all runs, sender µs/msg: 1 in flight "
        + ", ".join(f"{us(r['cpu_s'], n1)}" for r in one)
        + f"; {args.concurrency} in flight "
        + ", ".join(f"{us(r['cpu_s'], args.messages)}" for r in many)
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
