"""The agent's persisted state (``state.json``) and its command record.

Contract:
- ``write_json_atomic`` is the only way state reaches the disk: temp file in the same directory,
  fsync, ``os.replace``, fsync the directory. ``save_state`` first keeps the file it replaces as
  ``state.json.prev`` (a hard link: no copy, its data was fsynced when it was written).
- ``load_state`` never silently forgets the seq history: a missing, empty, torn or ill-shaped
  ``state.json`` is recovered from ``state.json.prev`` (and rewritten from it); when neither is
  usable it raises ``StateLost`` and the agent runs in safe mode, refusing every command until
  an operator runs ``fleetgate agent reset-state`` (docs/agent.md). Only a data dir with neither
  file is a fresh device.
- ``AgentState`` holds ``current``/``previous`` (as last recorded; the ``current`` link is the
  real truth and wins on start-up), ``last_seq`` and the record of the last ``RECORD_SIZE``
  commands keyed by ``seq``.
- ``classify`` decides what to do with an incoming command (new, replay, re-execute, stale,
  conflict) purely from the record: the idempotency rules of docs/protocol.md §4 live here.

Mutations happen on the agent's event loop only; callers persist with ``save`` (blocking: call
it through ``asyncio.to_thread``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from fleetgate.core.seqwindow import jump_problem, seq_base_of

log = logging.getLogger("fleetgate.agent")

RECORD_SIZE = 100
PREV_SUFFIX = ".prev"

IN_PROGRESS = "in-progress"
DONE = "done"
INTERRUPTED = "interrupted"
RETRYABLE = "retryable"  # finished with a retryable error: the same seq may run again


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: Any) -> Path:
    """``data`` as JSON in a fsynced temp file next to ``path`` (nothing left on failure)."""
    raw = json.dumps(data, indent=1, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that a crash leaves the old or the new content."""
    tmp = _write_temp(path, data)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@dataclass
class CommandRecord:
    seq: int
    command: str
    deployment_id: str
    status: str = IN_PROGRESS
    code: int | None = None
    body: dict[str, Any] | None = None
    # What the command resolved before acting (e.g. a rollback's from/to), so a restarted
    # agent can reconcile and a re-execution can answer as the first run would have.
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CommandRecord:
        return cls(
            seq=int(d["seq"]),
            command=str(d["command"]),
            deployment_id=str(d["deployment_id"]),
            status=str(d.get("status", DONE)),
            code=d.get("code"),
            body=d.get("body"),
            params=dict(d.get("params") or {}),
        )


@dataclass
class AgentState:
    current: str | None = None
    previous: str | None = None
    last_seq: int = 0
    commands: dict[int, CommandRecord] = field(default_factory=dict)
    # Issue 10 (agent/trial.py, agent/downgrade.py); every field has a default and is read
    # tolerantly, so a state.json written before them loads unchanged.
    trial: dict[str, Any] | None = None  # the activated release on trial, until commit/revert
    reverted: dict[str, Any] | None = None  # the last self-revert, reported until superseded
    committed: dict[str, str] = field(default_factory=dict)  # name -> highest committed version
    downgrades: dict[str, float] = field(default_factory=dict)  # release id -> authorised until

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "current": self.current,
            "previous": self.previous,
            "last_seq": self.last_seq,
            "commands": [asdict(c) for c in sorted(self.commands.values(), key=lambda c: c.seq)],
            "trial": self.trial,
            "reverted": self.reverted,
            "committed": self.committed,
            "downgrades": self.downgrades,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentState:
        records = [CommandRecord.from_dict(c) for c in d.get("commands", [])]
        return cls(
            current=d.get("current"),
            previous=d.get("previous"),
            last_seq=int(d.get("last_seq", 0)),
            commands={c.seq: c for c in records},
            trial=_opt_dict(d.get("trial")),
            reverted=_opt_dict(d.get("reverted")),
            committed={str(k): str(v) for k, v in (_opt_dict(d.get("committed")) or {}).items()},
            downgrades={
                str(k): float(v)
                for k, v in (_opt_dict(d.get("downgrades")) or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        )

    def record(self, rec: CommandRecord) -> None:
        """Add/replace a command record; the oldest beyond ``RECORD_SIZE`` are forgotten."""
        self.commands[rec.seq] = rec
        self.last_seq = max(self.last_seq, rec.seq)
        for old in sorted(self.commands)[:-RECORD_SIZE]:
            del self.commands[old]

    def interrupted(self) -> CommandRecord | None:
        """The newest command a crash cut short, if it was not superseded."""
        if not self.commands:
            return None
        newest = self.commands[max(self.commands)]
        return newest if newest.status in (IN_PROGRESS, INTERRUPTED) else None


def _opt_dict(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, dict) else None


class StateLost(Exception):
    """Neither ``state.json`` nor its previous copy can be read: the seq history is unknown."""


def prev_path(path: Path) -> Path:
    return path.with_name(path.name + PREV_SUFFIX)


def _read(path: Path) -> AgentState:
    """Parse one state file; any problem (missing, empty, torn, wrong shape) raises."""
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict) or not isinstance(data.get("last_seq"), int):
        raise ValueError("not an agent state document")
    return AgentState.from_dict(data)


def load_state(path: Path) -> AgentState:
    """Read ``state.json`` (see the module docstring for the recovery rules). Commands left
    ``in-progress`` by a dead agent come back as ``interrupted``."""
    prev = prev_path(path)
    if not path.exists() and not prev.exists():
        return AgentState()  # a fresh device
    try:
        state = _read(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        try:
            state = _read(prev)
        except (OSError, ValueError, KeyError, TypeError) as exc2:
            raise StateLost(
                f"{path} unreadable ({_why(exc)}) and {prev.name} unreadable ({_why(exc2)})"
            ) from exc2
        log.error(
            "state file %s unreadable (%s): recovered from %s (last_seq %d)",
            path,
            _why(exc),
            prev.name,
            state.last_seq,
        )
        # Repair the main file now: the next save links it to .prev, which must stay good.
        write_json_atomic(path, state.to_dict())
    for rec in state.commands.values():
        if rec.status == IN_PROGRESS:
            rec.status = INTERRUPTED
    return state


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def save_state(path: Path, state: AgentState) -> None:
    """Write the new content to a fsynced temp file first (a full disk fails here, before
    anything is touched), keep the current file as ``.prev`` (a hard link), then replace it."""
    tmp = _write_temp(path, state.to_dict())
    try:
        if path.exists():
            prev = prev_path(path)
            link = path.with_name(f"{prev.name}.tmp-{os.getpid()}")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
            except OSError:  # a filesystem without hard links: copy the bytes instead
                write_json_atomic(prev, json.loads(path.read_bytes()))
            else:
                link.replace(prev)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def reset_state(path: Path, last_seq: int) -> AgentState:
    """The operator's way out of safe mode: a new state file that keeps nothing but
    ``last_seq`` (``current`` is re-read from the link at the next start-up)."""
    state = AgentState(last_seq=last_seq)
    write_json_atomic(path, state.to_dict())
    write_json_atomic(prev_path(path), state.to_dict())
    return state


class Decision(str, Enum):
    NEW = "new"
    REPLAY = "replay"
    REEXECUTE = "reexecute"
    IN_PROGRESS = "in-progress"
    STALE = "stale-seq"
    CONFLICT = "seq-conflict"
    OUT_OF_RANGE = "seq-out-of-range"


def classify(
    state: AgentState, seq: int, command: str, deployment_id: str, seq_base: int | None = None
) -> Decision:
    """What to do with command ``command`` of ``deployment_id`` carrying ``seq`` (in block
    ``seq_base``, already checked against its window; default: the seq's own block). A new seq
    must not jump further than ``core.seqwindow`` allows; a refusal records nothing."""
    if seq_base is None:
        seq_base = seq_base_of(seq)
    rec = state.commands.get(seq)
    if rec is None:
        if seq <= state.last_seq:
            return Decision.STALE
        if jump_problem(seq_base, state.last_seq) is not None:
            return Decision.OUT_OF_RANGE
        return Decision.NEW
    if rec.command != command or rec.deployment_id != deployment_id:
        return Decision.CONFLICT
    if rec.status == DONE:
        return Decision.REPLAY
    if rec.status == IN_PROGRESS:
        return Decision.IN_PROGRESS
    return Decision.REEXECUTE
