"""Plain values of the device model: replies, the command record, releases, and snapshots.

``DeviceSnapshot`` is what tests assert on (``VirtualFleet.device_state(id)``): where the
device is (``current``/``previous``/``releases``/``last_seq``), which faults it carries, and what
it was asked to do:
- ``received[(command, release)]``: requests that passed authentication and validation, replays
  and ``busy``/``stale-seq`` refusals included;
- ``executed[(command, release)]``: requests that actually ran (a new seq, or a retryable failure
  run again) — the count a crash test checks: a controller that resumes correctly repeats a
  command with the same seq (answered from the record, not executed again), so
  ``executed[("stage", r)]`` and ``executed[("activate", r)]`` stay at 1 per deployment;
- ``history``: every such request in order, with its outcome (``staged``, ``active``,
  ``busy``, ``stale-seq`` …) and whether it was a replay;
- ``dropped``: requests the network faults swallowed before the device saw them. (aiohttp's
  client repeats an idempotent GET once on a dropped connection, so over HTTP one failed
  ``ping`` may account for two drops; commands are POSTs and are never repeated by it.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetgate.sim.fleetspec import release_version


@dataclass(frozen=True, slots=True)
class SimReply:
    code: int
    body: dict[str, Any]


def refusal(code: int, error: str, message: str, *, retryable: bool = False) -> SimReply:
    return SimReply(code, {"error": error, "message": message, "retryable": retryable})


class Refused(Exception):
    """A command handler's refusal: ``reply`` is the protocol error answer."""

    def __init__(self, reply: SimReply) -> None:
        super().__init__(reply.body.get("error"))
        self.reply = reply


@dataclass
class Record:
    seq: int
    command: str
    deployment_id: str
    status: str  # in-progress | done | retryable
    reply: SimReply | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    release_id: str
    version: str | None
    size: int
    footprint_mb: float  # artifact + unpacked, counted against free disk

    @classmethod
    def initial(cls, release_id: str) -> ReleaseInfo:
        """The release a device was provisioned with (its space is already accounted for)."""
        return cls(release_id, release_version(release_id), 0, 0.0)


@dataclass(frozen=True, slots=True)
class CommandEvent:
    seq: int
    command: str
    deployment_id: str
    release: str
    outcome: str
    replayed: bool = False


@dataclass(frozen=True)
class DeviceSnapshot:
    id: str
    current: str | None
    previous: str | None
    releases: tuple[str, ...]
    last_seq: int
    received: Mapping[tuple[str, str], int]
    executed: Mapping[tuple[str, str], int]
    history: tuple[CommandEvent, ...]
    faults: tuple[str, ...]
    dropped: int = 0  # requests swallowed by unreachable/flaky

    def executed_count(self, command: str, release: str) -> int:
        return self.executed.get((command, release), 0)
