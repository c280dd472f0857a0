"""The facts the inventory keeps about this device, read from the device itself.

Shared by ``GET /v1/facts`` (agent/service.py adds the release state) and ``fleetgate agent
enroll``: hardware and arch (from the config, or detected), RAM from ``/proc/meminfo``, the
size and free space of the agent's filesystem, whether a GPU is present (a Jetson's integrated
GPU, or an NVIDIA device node), and software versions (Python's, plus the config's
``[device.software]``). Standard library only.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from fleetgate.agent.probes import JETSON_GPU_LOAD, disk_free_mb, memory_mb

MODEL_FILES = (Path("/proc/device-tree/model"), Path("/sys/class/dmi/id/product_name"))


def disk_total_mb(path: Path) -> float:
    st = os.statvfs(path)
    return round(st.f_blocks * st.f_frsize / (1024 * 1024), 1)


def has_gpu(jetson_load: Path = JETSON_GPU_LOAD, nvidia: Path = Path("/dev/nvidiactl")) -> bool:
    return jetson_load.exists() or nvidia.exists()


def detect_hardware(files: tuple[Path, ...] = MODEL_FILES) -> str | None:
    """A hardware name from the board's model string (``Raspberry Pi 4 Model B Rev 1.4`` ->
    ``raspberry-pi-4-model-b-rev-1.4``); None when the board does not say."""
    for path in files:
        try:
            raw = path.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
        except OSError:
            continue
        slug = re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-.")[:128]
        if slug:
            return slug
    return None


def inventory_facts(
    hardware: str, arch: str, data_dir: Path, software: dict[str, str]
) -> dict[str, Any]:
    _used, total = memory_mb()
    return {
        "hardware": hardware,
        "arch": arch,
        "ram_mb": total,
        "disk_mb": disk_total_mb(data_dir),
        "disk_free_mb": disk_free_mb(data_dir),
        "gpu": has_gpu(),
        "software": {"python": sys.version.split()[0], **software},
    }
