"""The error hierarchy.

One root, ``FleetgateError``; subclasses say *who is at fault*, because that decides what the
caller does: an ``InputError`` is the user's to fix (exit code 2, one clear line, no traceback),
a ``DeviceError`` belongs to one device (skip or quarantine it, the deployment goes on), a
``TransportError`` may go away on retry (``retryable``), an ``IntegrityError`` means something
was tampered with or corrupted and must never be retried into success.

Errors carry context (``device_id``, ``deployment_id``) so logs and reports can say where.
"""

from __future__ import annotations


class FleetgateError(Exception):
    """Root of every error fleetgate raises on purpose."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        device_id: str | None = None,
        deployment_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.device_id = device_id
        self.deployment_id = deployment_id
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class InputError(FleetgateError):
    """Bad user input: a file, a flag, a value. Exit code 2."""


class ValidationError(InputError):
    """A file failed validation; ``problems`` holds one line per problem (all of them)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class PolicyError(InputError):
    """A rollout policy breaks a guardrail or is malformed."""


class GuardrailError(FleetgateError):
    """An action would break one of the spec's guardrails. Never retried."""


class IllegalTransition(FleetgateError):
    """The deployment state machine was given an event its current phase does not accept."""


class IntegrityError(FleetgateError):
    """Checksum, signature or hash-chain mismatch: data was corrupted or tampered with."""


class DeviceError(FleetgateError):
    """A device refused or failed a command (disk full, start failed, rollback failed)."""


class TransportError(FleetgateError):
    """The device could not be reached or did not answer in time."""

    retryable = True


class StoreError(FleetgateError):
    """The store is unreachable, locked, or its schema is not what this version expects."""


class StoreConfigError(StoreError, InputError):
    """The store URL is malformed or names something fleetgate cannot use. Exit code 2."""


class LeaseLost(StoreError):
    """A driver's lease on a deployment was taken over (or could not be renewed): its write
    was refused and it must stop. Never retried: the new holder drives the deployment now.
    ``holder`` and ``epoch`` name the lease's current holding when known."""

    def __init__(
        self,
        message: str,
        *,
        deployment_id: str,
        holder: str | None = None,
        epoch: int | None = None,
    ) -> None:
        super().__init__(message, deployment_id=deployment_id, retryable=False)
        self.holder = holder
        self.epoch = epoch


class LogMoved(LeaseLost):
    """A driver's append was refused because the deployment's log moved under it: a human
    decision (halt, rollback, ...) was recorded by another process since the driver last read
    it. The driver re-reads the log and drives on from the new state; nothing of the refused
    batch was written."""
