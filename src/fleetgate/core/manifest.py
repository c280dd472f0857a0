"""Manifest <-> plain dict, and the canonical bytes a signature covers.

Standard library only: the agent decodes the signed manifest with this module and must not need
pydantic. ``manifest_from_dict`` collects *every* problem as ``field: reason`` and raises one
``ValidationError`` listing them all, prefixed by ``where`` (a file name) so the user sees
``fleetgate.toml: requires.ram_mb: expected an integer``.

Canonical form: JSON with sorted keys, no whitespace, UTF-8 — the same manifest always gives the
same bytes, so signatures and bundle digests are reproducible.

A built manifest also carries ``files`` (every payload member with its size and sha256, or its
link target: what a device's release slot must hold) and ``artifact.valid_until`` (the expiry a
stage checks). Both are bound by the signature like ``size``/``sha256``; ``fleetgate.toml``
values for them are ignored (the builder computes them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fleetgate.core.model import (
    SHA256_RE,
    Arch,
    ArtifactKind,
    Manifest,
    PayloadFile,
    Requirements,
    RunSpec,
)
from fleetgate.errors import ValidationError


class _Problems:
    def __init__(self, where: str) -> None:
        self.where = where
        self.items: list[str] = []

    def add(self, field: str, reason: str) -> None:
        self.items.append(f"{self.where}: {field}: {reason}")


def _table(data: Mapping[str, Any], key: str, p: _Problems) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        p.add(key, "expected a table")
        return {}
    return value


def _str(data: Mapping[str, Any], key: str, field: str, p: _Problems, required: bool) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            p.add(field, "missing")
        return None
    if not isinstance(value, str) or not value:
        p.add(field, "expected a non-empty string")
        return None
    return value


def _int(data: Mapping[str, Any], key: str, field: str, p: _Problems) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        p.add(field, "expected a non-negative integer")
        return 0
    return value


def _str_list(data: Mapping[str, Any], key: str, field: str, p: _Problems) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        p.add(field, "expected a list of strings")
        return ()
    return tuple(value)


def _str_map(data: Mapping[str, Any], key: str, field: str, p: _Problems) -> dict[str, str]:
    value = data.get(key, {})
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        p.add(field, "expected a table of strings")
        return {}
    return {str(k): v for k, v in value.items()}


VALID_UNTIL_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# The one directory of a release slot that is the agent's, not the payload's.
META_DIR = ".fleetgate"


def parse_utc(value: str) -> datetime | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` → an aware datetime; ``None`` if it is not one."""
    if not VALID_UNTIL_RE.match(value):
        return None
    try:
        return datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        return None


def _payload_path(path: object) -> str | None:
    """A payload member's path in normal form, or None: relative POSIX, no ``.``/``..``/empty
    component, no NUL, not under the agent's ``.fleetgate`` directory."""
    if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
        return None
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[0] == META_DIR:
        return None
    return path


def _file_entry(item: object, i: int, p: _Problems) -> PayloadFile | None:
    where = f"files[{i}]"
    if not isinstance(item, Mapping):
        p.add(where, "expected a table")
        return None
    path = _payload_path(item.get("path"))
    if path is None:
        p.add(f"{where}.path", "expected a relative path without '.', '..' or empty parts")
        return None
    kind = item.get("type")
    if kind == "dir":
        return PayloadFile(path, "dir")
    if kind == "link":
        target = item.get("target")
        if not isinstance(target, str) or not target or target.startswith("/"):
            p.add(f"{where}.target", "expected a relative link target")
            return None
        return PayloadFile(path, "link", target=target)
    if kind != "file":
        p.add(f"{where}.type", "expected file, dir or link")
        return None
    size = item.get("size")
    sha = item.get("sha256")
    exe = item.get("executable", False)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        p.add(f"{where}.size", "expected a non-negative integer")
        return None
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        p.add(f"{where}.sha256", "expected 64 lowercase hex digits")
        return None
    if not isinstance(exe, bool):
        p.add(f"{where}.executable", "expected true or false")
        return None
    return PayloadFile(path, "file", size=size, sha256=sha, executable=exe)


def _files(data: Mapping[str, Any], p: _Problems) -> tuple[PayloadFile, ...] | None:
    """The ``files`` list: sorted, unique, every parent a listed directory."""
    raw = data.get("files")
    if raw is None:
        return None
    if not isinstance(raw, list):
        p.add("files", "expected a list")
        return None
    entries = [_file_entry(item, i, p) for i, item in enumerate(raw)]
    if any(e is None for e in entries):
        return None
    files = tuple(e for e in entries if e is not None)
    kinds: dict[str, str] = {}
    for e in files:
        if e.path in kinds:
            p.add("files", f"{e.path!r} is listed twice")
            return None
        parent = e.path.rpartition("/")[0]
        if parent and kinds.get(parent) != "dir":
            p.add("files", f"{e.path!r}: its directory {parent!r} is not listed before it")
            return None
        kinds[e.path] = e.kind
    return files


def manifest_from_dict(data: Mapping[str, Any], where: str = "manifest") -> Manifest:
    """Build a ``Manifest`` from the ``fleetgate.toml`` layout (``[artifact]``, ``[requires]``,
    ``[run]``). Raises ``ValidationError`` listing every problem."""
    p = _Problems(where)
    art = _table(data, "artifact", p)
    req = _table(data, "requires", p)
    run = _table(data, "run", p)
    name = _str(art, "name", "artifact.name", p, True)
    version = _str(art, "version", "artifact.version", p, True)
    kind_s = _str(art, "kind", "artifact.kind", p, False) or "bundle"
    kind: ArtifactKind | None = None
    try:
        kind = ArtifactKind(kind_s)
    except ValueError:
        p.add("artifact.kind", f"{kind_s!r} is not one of bundle, binary, config")
    size = art.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        p.add("artifact.size", "expected a non-negative integer")
        size = None
    sha = _str(art, "sha256", "artifact.sha256", p, False)
    valid_until = _str(art, "valid_until", "artifact.valid_until", p, False)
    if valid_until is not None and parse_utc(valid_until) is None:
        p.add("artifact.valid_until", "expected YYYY-MM-DDTHH:MM:SSZ (UTC)")
        valid_until = None
    files = _files(data, p)

    arches: list[Arch] = []
    for a in _str_list(req, "arch", "requires.arch", p):
        try:
            arches.append(Arch(a))
        except ValueError:
            p.add("requires.arch", f"{a!r} is not one of arm64, armv7, x86_64")
    gpu = req.get("gpu", False)
    if not isinstance(gpu, bool):
        p.add("requires.gpu", "expected true or false")
        gpu = False
    requires: Requirements | None = None
    try:
        requires = Requirements(
            arch=tuple(arches),
            ram_mb=_int(req, "ram_mb", "requires.ram_mb", p),
            disk_mb=_int(req, "disk_mb", "requires.disk_mb", p),
            gpu=gpu,
            software=_str_map(req, "software", "requires.software", p),
        )
    except ValueError as exc:
        p.add("requires", str(exc))

    runspec = RunSpec(
        command=_str_list(run, "command", "run.command", p),
        health_url=_str(run, "health_url", "run.health_url", p, False),
        metrics_url=_str(run, "metrics_url", "run.metrics_url", p, False),
        reload_command=_str_list(run, "reload_command", "run.reload_command", p),
        env=_str_map(run, "env", "run.env", p),
    )
    if kind in (ArtifactKind.BUNDLE, ArtifactKind.BINARY) and not runspec.command:
        p.add("run.command", f"required for kind {kind.value}")
    if p.items or name is None or version is None or kind is None or requires is None:
        raise ValidationError(p.items or [f"{where}: invalid manifest"])
    try:
        return Manifest(
            name=name,
            version=version,
            kind=kind,
            requires=requires,
            run=runspec,
            size=size,
            sha256=sha,
            files=files,
            valid_until=valid_until,
        )
    except ValueError as exc:
        raise ValidationError([f"{where}: artifact: {exc}"]) from exc


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    """The inverse of ``manifest_from_dict``; omits unset optional fields."""
    art: dict[str, Any] = {"name": m.name, "version": m.version, "kind": m.kind.value}
    if m.size is not None:
        art["size"] = m.size
    if m.sha256 is not None:
        art["sha256"] = m.sha256
    if m.valid_until is not None:
        art["valid_until"] = m.valid_until
    req: dict[str, Any] = {
        "arch": [a.value for a in m.requires.arch],
        "ram_mb": m.requires.ram_mb,
        "disk_mb": m.requires.disk_mb,
        "gpu": m.requires.gpu,
        "software": dict(m.requires.software),
    }
    run: dict[str, Any] = {"command": list(m.run.command)}
    if m.run.health_url:
        run["health_url"] = m.run.health_url
    if m.run.metrics_url:
        run["metrics_url"] = m.run.metrics_url
    if m.run.reload_command:
        run["reload_command"] = list(m.run.reload_command)
    if m.run.env:
        run["env"] = dict(m.run.env)
    doc: dict[str, Any] = {"artifact": art, "requires": req, "run": run}
    if m.files is not None:
        doc["files"] = [_file_to_dict(f) for f in m.files]
    return doc


def _file_to_dict(f: PayloadFile) -> dict[str, Any]:
    if f.kind == "dir":
        return {"path": f.path, "type": "dir"}
    if f.kind == "link":
        return {"path": f.path, "type": "link", "target": f.target}
    out: dict[str, Any] = {"path": f.path, "type": "file", "size": f.size, "sha256": f.sha256}
    if f.executable:
        out["executable"] = True
    return out


def canonical_json(data: Any) -> bytes:
    """Deterministic JSON bytes: what signatures and hash chains are computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_manifest(m: Manifest) -> bytes:
    return canonical_json(manifest_to_dict(m))
