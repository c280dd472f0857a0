"""A prototype store writer in a second process (issue 12 item 5), for the benchmarks only.

``RemoteSink`` is an ``EventSink`` (what ``Recorder`` appends through) whose ``append_many``
pickles ``(events, fence, expect_last)`` onto a Unix socketpair to a child process — this file
run as ``python writer_child.py URL FD store|lean`` — that opens its own ``Store`` on the same
URL and calls ``Store.append_many`` with them (``lean``: ``bench/lean_append.py``'s sqlite3
append): the fence and the log's last seq are checked in the child's write transaction exactly
as in process, and the chain is sealed there. The child answers with
the batch's last ``StoredEvent`` (the recorder only reads its seq; the whole list would cost an
unpickle per event for nothing) or with the error, which is raised in the controller again.

Not production code: no reconnect, no supervision of the child, one batch in flight (the
recorder's flusher is serial). The benchmarks measure whether it pays
(``bench/engine_bench.py --writer-process``, ``bench/writer_process_bench.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from fleetgate import errors
from fleetgate.core.events import Event, StoredEvent
from fleetgate.errors import FleetgateError, StoreError

FRAME = struct.Struct("!I")
PROTOCOL = pickle.HIGHEST_PROTOCOL


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
    return await reader.readexactly(n)


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload)) + payload


class RemoteSink:
    def __init__(self, url: str, *, lean: bool = False) -> None:
        mine, theirs = socket.socketpair()
        self._sock = mine
        self.proc = subprocess.Popen(
            [sys.executable, __file__, url, str(theirs.fileno()), "lean" if lean else "store"],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self._lock = asyncio.Lock()
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def start(self) -> None:
        """Connect and wait until the child's store is open (its first frame)."""
        reader, writer = await asyncio.open_connection(sock=self._sock)
        await read_frame(reader)
        self._io = reader, writer

    async def append_many(
        self,
        new: list[Event],
        *,
        fence: Any = None,
        expect_last: int | None = None,
        last_only: bool = False,
    ) -> list[StoredEvent]:
        # The child always answers with the last stored event only (what a recorder reads).
        if not new:
            return []
        assert self._io is not None, "RemoteSink.start() first"
        reader, writer = self._io
        async with self._lock:
            # list(): a list subclass would need its class in the child
            batch = list(new)
            writer.write(frame(pickle.dumps((batch, fence, expect_last), protocol=PROTOCOL)))
            kind, value = pickle.loads(await read_frame(reader))
        if kind == "ok":
            return [value]
        if kind == "fleetgate":
            raise rebuild(*value)
        raise StoreError(f"writer process: {value}")

    def cpu_s(self) -> float:
        """utime + stime of the child so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def close(self) -> None:
        if self._io is not None:
            with contextlib.suppress(ConnectionError):  # a child that died: wait() says so
                self._io[1].write(FRAME.pack(0))
                await self._io[1].drain()
            self._io[1].close()
            self._io = None
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def rebuild(name: str, message: str, attrs: dict[str, Any]) -> FleetgateError:
    """A fleetgate error sent by the child, as the same class with the same attributes."""
    cls = getattr(errors, name)
    exc: FleetgateError = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(attrs)
    return exc


async def serve(url: str, fd: int, lean: bool) -> None:
    from lean_append import append_sync, connect

    from fleetgate.store import Store

    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    async with Store.open(url) as store:
        # lean: bench/lean_append.py's sqlite3 append, called right here — a writer process
        # may block, it has nothing else to do
        conn = connect(url.partition(":///")[2]) if lean else None
        writer.write(frame(b"ready"))
        while True:
            (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
            if n == 0:
                break
            new, fence, expect_last = pickle.loads(await reader.readexactly(n))
            try:
                if conn is not None:
                    stored = append_sync(conn, new, fence, expect_last)
                else:
                    stored = await store.append_many(new, fence=fence, expect_last=expect_last)
                answer = pickle.dumps(("ok", stored[-1]), protocol=PROTOCOL)
            except Exception as exc:  # handed back to the recorder, which fails as in process
                if isinstance(exc, FleetgateError) and hasattr(errors, type(exc).__name__):
                    # By name and attributes: fleetgate's errors take keyword-only arguments,
                    # which pickle cannot rebuild (LeaseLost, LogMoved: the engine needs them).
                    value: Any = (type(exc).__name__, str(exc), vars(exc))
                    answer = pickle.dumps(("fleetgate", value), protocol=PROTOCOL)
                else:
                    answer = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
            writer.write(frame(answer))
    writer.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "lean"))
