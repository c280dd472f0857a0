"""How much free disk a stage needs: one formula for the agent, the simulator and pre-flight.

A stage must fit the downloaded artifact, its unpacked files (at least the artifact's size: the
manifest's ``requires.disk_mb`` may be smaller than the payload, never trusted below it) and the
agent's configured reserve — while the current and previous releases (the rollback copy) stay
on disk. Pre-flight used its own formula once and let devices through that the agent then
refused with ``507 insufficient-disk`` (issue 7.1); this module is the one place it lives.

Pure and light (the agent imports it): standard library only.
"""

from __future__ import annotations

MIB = 1024 * 1024


def stage_bytes_needed(artifact_bytes: int, unpacked_mb: float, reserve_mb: float) -> int:
    """Free bytes a device needs to stage an artifact of ``artifact_bytes`` whose manifest
    says ``requires.disk_mb = unpacked_mb``, keeping ``reserve_mb`` free."""
    if artifact_bytes < 0 or unpacked_mb < 0 or reserve_mb < 0:
        raise ValueError("sizes must not be negative")
    unpacked = max(round(unpacked_mb * MIB), artifact_bytes)
    return artifact_bytes + unpacked + round(reserve_mb * MIB)


def stage_mb_needed(artifact_bytes: int, unpacked_mb: float, reserve_mb: float) -> float:
    """``stage_bytes_needed`` in MiB, for messages and the pre-flight record."""
    return stage_bytes_needed(artifact_bytes, unpacked_mb, reserve_mb) / MIB
