"""Answers of the agent's command endpoints, and the refusals they may carry.

Contract: every command handler returns a ``Reply`` (HTTP status + JSON body) or raises
``CommandError``, which becomes ``{"error", "message", "retryable"}`` with its status
(docs/protocol.md §2). A reply is what the command record stores and replays, so it is plain
JSON data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def retryable(self) -> bool:
        return bool(self.body.get("retryable", False))


class CommandError(Exception):
    """A refusal with its protocol error code (``insufficient-disk``, ``stale-seq`` …)."""

    def __init__(self, code: int, error: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.error = error
        self.message = message
        self.retryable = retryable

    def reply(self) -> Reply:
        return Reply(self.code, error_body(self.error, self.message, retryable=self.retryable))


def error_body(error: str, message: str, *, retryable: bool = False) -> dict[str, Any]:
    return {"error": error, "message": message, "retryable": retryable}


def bad_request(message: str) -> CommandError:
    return CommandError(400, "bad-request", message)
