"""Read a TOML file a user named: any problem is one ``InputError`` line naming the file.

Standard library only (``tomllib``, ``tomli`` on 3.10), like the rest of ``config/``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fleetgate.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the controller runs on 3.11+
    import tomli as tomllib


def read_toml(path: Path, missing: str = "no such file") -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: {missing}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
