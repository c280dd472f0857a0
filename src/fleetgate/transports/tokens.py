"""Where a device's bearer token comes from: ``token_env`` or ``token_file`` of the inventory.

Contract:
- ``TokenSource.token_for(device)`` returns the token or raises ``DeviceRefusal`` (code
  ``no-token``, not retryable) whose message names the device and the variable or file — never
  any part of a token.
- ``token_env`` is read from the environment at each call (cheap, and an operator may export it
  after the controller started); ``token_file`` is read once, stripped of surrounding whitespace
  and cached, because thousands of devices usually share a handful of files.
- A relative ``token_file`` is resolved against ``base_dir`` (default: the working directory).
- ``overrides`` maps device ids to tokens directly (tests, the in-process simulator).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fleetgate.core.model import Device
from fleetgate.transports.base import DeviceRefusal


def _no_token(device: Device, why: str) -> DeviceRefusal:
    return DeviceRefusal(
        f"{device.id}: no credential: {why}",
        device_id=device.id,
        code="no-token",
        status=None,
        retryable=False,
    )


class TokenSource:
    """Resolves and caches device credentials. Never logs or formats a token."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self._environ = environ
        self._base_dir = base_dir
        self._overrides = dict(overrides or {})
        self._files: dict[Path, str] = {}
        # The same cache by the inventory's spelling of the file: resolving a Path on every
        # call cost ~4 µs, 1-2 % of the controller's CPU per agent call (issue 12).
        self._by_name: dict[str, str] = {}

    def __repr__(self) -> str:  # never show cached tokens
        return f"TokenSource(files={len(self._files)}, overrides={len(self._overrides)})"

    def token_for(self, device: Device) -> str:
        override = self._overrides.get(device.id)
        if override is not None:
            return override
        if device.token_env is not None:
            env = os.environ if self._environ is None else self._environ
            value = env.get(device.token_env, "").strip()
            if not value:
                raise _no_token(device, f"environment variable {device.token_env} is not set")
            return value
        if device.token_file is not None:
            cached = self._by_name.get(device.token_file)
            if cached is None:
                cached = self._by_name[device.token_file] = self._from_file(
                    device, device.token_file
                )
            return cached
        raise _no_token(device, "the inventory gives neither token_env nor token_file")

    def _from_file(self, device: Device, name: str) -> str:
        path = Path(name).expanduser()
        if not path.is_absolute() and self._base_dir is not None:
            path = self._base_dir / path
        cached = self._files.get(path)
        if cached is not None:
            return cached
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise _no_token(device, f"token file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise _no_token(device, f"token file {path} is unreadable ({reason})") from None
        if not value:
            raise _no_token(device, f"token file {path} is empty")
        self._files[path] = value
        return value
