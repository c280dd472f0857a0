"""``load_inventory(path)``: any supported inventory file -> validated ``Device`` list.

Which reader runs:
- ``.csv``                          -> fleetgate CSV (fleet_csv.py)
- ``.yaml`` / ``.yml`` / ``.json``  -> YAML; a top-level ``devices:`` is the fleetgate format,
  a mapping of groups (``all:``, ``children:``, ``hosts:``) is an Ansible YAML inventory
- anything else (``.ini``, ``hosts``, no extension) -> sniffed: a first line that looks like
  ``[section]`` or ``host var=value`` is Ansible INI, one that looks like ``key:`` is YAML.

Contract: returns devices in file order, all valid and with unique ids; otherwise raises
``InputError`` (unreadable or malformed file: one line naming file and line) or
``ValidationError`` (one line per problem, all of them). Never a traceback for a bad file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from fleetgate.core.model import Device
from fleetgate.errors import InputError, ValidationError
from fleetgate.registry.ansible import read_ansible_ini, read_ansible_yaml, tree_to_entries
from fleetgate.registry.fields import RawEntry, build_devices
from fleetgate.registry.fleet_csv import read_fleet_csv
from fleetgate.registry.fleet_yaml import read_fleet_yaml
from fleetgate.registry.yaml_text import parse_yaml

YAML_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
_YAML_FIRST_LINE = re.compile(r"^(---|[^\s=\[#;][^=]*:(\s.*)?$)")
_ANSIBLE_GROUP_KEYS = frozenset({"hosts", "vars", "children"})


def load_inventory(path: Path) -> list[Device]:
    """Load and validate the inventory at ``path`` (fleet.yaml, fleet.csv, Ansible INI/YAML)."""
    return parse_inventory(_read_text(path), str(path), path.suffix)


def parse_inventory(text: str, source: str, suffix: str = "") -> list[Device]:
    """Validate an inventory given as text; ``suffix`` (``.csv``, ``.yaml``, ``.ini``) picks the
    format as a file name's would, else it is sniffed (YAML or Ansible INI)."""
    if suffix.lower() == ".csv":
        entries, problems = read_fleet_csv(text, source)
    elif suffix.lower() in YAML_SUFFIXES or _looks_like_yaml(text):
        entries, problems = _read_yaml(text, source)
    else:
        entries, problems = tree_to_entries(read_ansible_ini(text, source))
    return build_devices(source, entries, problems)


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheets often save CSV with a byte-order mark.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected an inventory file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _looks_like_yaml(text: str) -> bool:
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        return bool(_YAML_FIRST_LINE.match(line))
    return False


def _is_ansible_yaml(doc: Mapping[object, object]) -> bool:
    return "all" in doc or any(
        isinstance(node, Mapping) and _ANSIBLE_GROUP_KEYS.intersection(map(str, node))
        for node in doc.values()
    )


def _read_yaml(text: str, source: str) -> tuple[list[RawEntry], list[str]]:
    doc = parse_yaml(text, source)
    if isinstance(doc, Mapping) and "devices" in doc:
        return read_fleet_yaml(doc, source)
    if isinstance(doc, Mapping) and _is_ansible_yaml(doc):
        return tree_to_entries(read_ansible_yaml(doc, source))
    raise ValidationError(
        [
            f"{source}: not an inventory: expected a top-level 'devices:' list (fleetgate "
            "format) or an Ansible inventory ('all:' with 'children:'/'hosts:')"
        ]
    )
