"""The agent's configuration file (``agent.toml``) → ``AgentConfig``.

Contract: ``load_config(path)`` returns a fully validated, frozen ``AgentConfig`` or raises
``ValidationError`` listing every problem as ``<file>: <table.field>: <reason>`` (the CLI turns
that into one line per problem and exit code 2). Relative paths are resolved against the
config file's directory. The bearer token is read here (from ``token_env`` or ``token_file``)
and kept only in ``AgentConfig.token``, whose ``repr`` hides it: it must never reach a log.

Standard library only (``tomllib``, or ``tomli`` on Python 3.10): the agent runs on small
boards.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetgate.core.model import DEVICE_ID_RE, Arch
from fleetgate.errors import ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 devices
    import tomli as tomllib

_MACHINE_TO_ARCH = {
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armv7",
    "armv7": "armv7",
    "x86_64": "x86_64",
    "amd64": "x86_64",
}


CONTAINMENTS = ("auto", "systemd-scope", "cgroup", "process-group")


def host_arch() -> str:
    """This machine's architecture in the inventory's vocabulary (``arm64|armv7|x86_64``)."""
    machine = platform.machine().lower()
    return _MACHINE_TO_ARCH.get(machine, machine)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    device_id: str
    hardware: str
    arch: str
    data_dir: Path
    public_key: Path | None  # a one-key root (earlier configs); or:
    token: str = field(repr=False)
    root: Path | None = None  # the initial root.json (TUF-style, agent/trust.py)
    token_env: str | None = None
    software: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 7601
    keep_releases: int = 2
    health_timeout_s: float = 20.0
    probe_interval_s: float = 5.0
    max_unpacked_mb: int = 2048
    max_members: int = 20000
    reserve_mb: int = 0
    stop_grace_s: float = 5.0
    app_mode: str = "process"
    app_unit: str | None = None
    app_port: int = 8080
    systemctl: str = "systemctl"
    token_file: Path | None = None
    # Transport hygiene (docs/agent.md "TLS"): the server's certificate and key, the CA whose
    # client certificates it requires (mutual TLS), and how fetches authenticate the
    # distribution point (a CA bundle instead of the system store, a pinned certificate).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    ca_bundle: Path | None = None
    fetch_pin_sha256: str | None = None
    # Slow retrieval: a download averaging less than this after the window is abandoned.
    min_fetch_kbps: float = 1.0
    fetch_rate_window_s: float = 60.0
    # Where a release's processes are kept (docs/agent.md "Containment"): auto | systemd-scope |
    # cgroup | process-group; systemd_run: the systemd-run binary (tests use a stand-in).
    containment: str = "auto"
    systemd_run: str = "systemd-run"
    # The release runs as this user (and its primary group) instead of the agent's.
    run_as: str | None = None
    run_as_uid: int | None = None
    run_as_gid: int | None = None
    source: Path = field(default=Path("agent.toml"))
    # Commit or revert (issue 10, agent/trial.py): an activated release is on trial for
    # ``trial_s`` unless committed; ``trial_max_starts`` starts of it without a commit revert it.
    trial_s: float = 300.0
    trial_max_starts: int = 3
    on_commit: Path | None = None  # hook scripts (the bootloader's "mark good" / fallback)
    on_revert: Path | None = None
    # MQTT (docs/agent.md "MQTT"): the broker this device dials out to, and its broker
    # credential. The HTTP listener runs when no broker is set or ``agent.listen`` is given.
    mqtt: MqttConfig | None = None
    http_listen: bool = True


@dataclass(frozen=True, slots=True)
class MqttConfig:
    broker: str  # mqtt://host[:port] | mqtts://host[:port]
    username: str
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    ca_bundle: Path | None = None
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30


class _Reader:
    """Typed field access that records problems instead of raising on the first one."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[str] = []

    def add(self, fieldname: str, reason: str) -> None:
        self.problems.append(f"{self.where}: {fieldname}: {reason}")

    def table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.add(key, "expected a table")
            return {}
        return value

    def string(self, t: dict[str, Any], table: str, key: str, default: str | None) -> str | None:
        value = t.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.add(f"{table}.{key}", "expected a non-empty string")
            return None
        return value

    def number(self, t: dict[str, Any], table: str, key: str, default: float, lo: float) -> float:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
            self.add(f"{table}.{key}", f"expected a number >= {lo:g}")
            return default
        return float(value)

    def integer(self, t: dict[str, Any], table: str, key: str, default: int, lo: int) -> int:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            self.add(f"{table}.{key}", f"expected an integer >= {lo}")
            return default
        return value


def _check_root(r: _Reader, path: Path) -> None:
    """A cheap shape check; signatures are checked (with ``cryptography``) when first needed."""
    try:
        doc = json.loads(path.read_bytes()[: 64 * 1024 + 1])
    except OSError as exc:
        r.add("agent.root", f"cannot read {path}: {exc.strerror}")
        return
    except ValueError:
        r.add("agent.root", f"{path} is not a JSON root document")
        return
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict) or signed.get("_type") != "root":
        r.add("agent.root", f"{path} is not a root document (signed._type != 'root')")


def _check_public_key(r: _Reader, path: Path) -> None:
    """A cheap shape check; the key is parsed (with ``cryptography``) when first needed."""
    try:
        head = path.read_bytes()[:4096]
    except OSError as exc:
        r.add("agent.public_key", f"cannot read {path}: {exc.strerror}")
        return
    if b"-----BEGIN PUBLIC KEY-----" not in head:
        r.add("agent.public_key", f"{path} is not a PEM public key")


def _listen(r: _Reader, value: str) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        r.add("agent.listen", f"expected HOST:PORT, got {value!r}")
        return "127.0.0.1", 7601
    return host.strip("[]"), int(port_s)


def _token(r: _Reader, agent: dict[str, Any], base: Path) -> tuple[str, str | None, Path | None]:
    env_name = r.string(agent, "agent", "token_env", None)
    file_name = r.string(agent, "agent", "token_file", None)
    if (env_name is None) == (file_name is None):
        r.add("agent.token_env", "set exactly one of token_env or token_file")
        return "", None, None
    if env_name is not None:
        token = os.environ.get(env_name, "").strip()
        if not token:
            r.add("agent.token_env", f"environment variable {env_name} is not set or empty")
        return token, env_name, None
    assert file_name is not None
    path = base / file_name
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        r.add("agent.token_file", f"cannot read {path}: {exc.strerror}")
        return "", None, path
    if not token:
        r.add("agent.token_file", f"{path} is empty")
    return token, None, path


def _file(r: _Reader, t: dict[str, Any], key: str, base: Path, table: str = "agent") -> Path | None:
    """An optional path of ``[table]`` that must name a readable file."""
    name = r.string(t, table, key, None)
    if name is None:
        return None
    path = base / name
    if not path.is_file():
        r.add(f"{table}.{key}", f"{path} is not a readable file")
    return path


def _pin(r: _Reader, agent: dict[str, Any]) -> str | None:
    """A sha256 certificate fingerprint, hex with or without ':' separators → lowercase hex."""
    value = r.string(agent, "agent", "fetch_pin_sha256", None)
    if value is None:
        return None
    digest = value.replace(":", "").lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        r.add("agent.fetch_pin_sha256", "expected a sha256 fingerprint (64 hex digits)")
        return None
    return digest


def _run_as(r: _Reader, app: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    """``[app] run_as``: a user name or a numeric uid, resolved now (a typo fails the config,
    not the first start)."""
    value = app.get("run_as")
    if value is None:
        return None, None, None
    import pwd

    try:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            entry = pwd.getpwuid(value)
        elif isinstance(value, str) and value:
            entry = pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
        else:
            r.add("app.run_as", "expected a user name or uid")
            return None, None, None
    except KeyError:
        r.add("app.run_as", f"no such user {value!r}")
        return None, None, None
    if entry.pw_uid == 0:
        r.add("app.run_as", "must not be root (uid 0): that is what it is for")
        return None, None, None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        r.add("app.run_as", "switching users needs an agent running as root")
        return None, None, None
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def _hook(r: _Reader, agent: dict[str, Any], key: str, base: Path) -> Path | None:
    """A hook script: must exist and be executable now, so a typo is found at start-up and
    not on the day of the first revert."""
    value = r.string(agent, "agent", key, None)
    if value is None:
        return None
    path = base / value
    if not path.is_file() or not os.access(path, os.X_OK):
        r.add(f"agent.{key}", f"{path} is not an executable file")
    return path


def _secret(r: _Reader, t: dict[str, Any], table: str, base: Path) -> str | None:
    """``password_env`` or ``password_file`` (neither: no password; both: an error)."""
    env_name = r.string(t, table, "password_env", None)
    file_name = r.string(t, table, "password_file", None)
    if env_name is not None and file_name is not None:
        r.add(f"{table}.password_env", "set at most one of password_env or password_file")
        return None
    if env_name is not None:
        value = os.environ.get(env_name, "").strip()
        if not value:
            r.add(f"{table}.password_env", f"environment variable {env_name} is not set or empty")
        return value or None
    if file_name is not None:
        path = base / file_name
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            r.add(f"{table}.password_file", f"cannot read {path}: {exc.strerror}")
            return None
        if not value:
            r.add(f"{table}.password_file", f"{path} is empty")
        return value or None
    return None


def _mqtt(
    r: _Reader, data: dict[str, Any], device_id: str | None, ca: Path | None, base: Path
) -> MqttConfig | None:
    if "mqtt" not in data:
        return None
    t = r.table(data, "mqtt")
    broker = r.string(t, "mqtt", "broker", None)
    if broker is None:
        if "broker" not in t:
            r.add("mqtt.broker", "missing")
        return None
    from fleetgate.core.mqttwire import WireError, parse_broker

    try:
        _, segment = parse_broker(broker)
        if segment:
            r.add("mqtt.broker", "expected mqtt://HOST[:PORT] without a path")
    except WireError as exc:
        r.add("mqtt.broker", str(exc))
    username = r.string(t, "mqtt", "username", None) or device_id or ""
    client_id = r.string(t, "mqtt", "client_id", None)
    ca_bundle = _file(r, t, "ca_bundle", base, "mqtt") if "ca_bundle" in t else ca
    return MqttConfig(
        broker=broker,
        username=username,
        password=_secret(r, t, "mqtt", base),
        client_id=client_id,
        ca_bundle=ca_bundle,
        session_expiry_s=r.integer(t, "mqtt", "session_expiry_s", 7 * 24 * 3600, 0),
        keepalive_s=r.integer(t, "mqtt", "keepalive_s", 30, 5),
    )


def parse_config(data: dict[str, Any], source: Path) -> AgentConfig:
    """Validate a parsed ``agent.toml`` document (see module docstring)."""
    r = _Reader(str(source))
    base = source.parent
    device = r.table(data, "device")
    agent = r.table(data, "agent")
    app = r.table(data, "app")

    device_id = r.string(device, "device", "id", None)
    if device_id is None:
        if "id" not in device:
            r.add("device.id", "missing")
    elif not DEVICE_ID_RE.match(device_id):
        r.add("device.id", "must match [A-Za-z0-9._-]{1,128}")
    hardware = r.string(device, "device", "hardware", None)
    if hardware is None and "hardware" not in device:
        r.add("device.hardware", "missing")
    arch = r.string(device, "device", "arch", host_arch()) or host_arch()
    if arch not in {a.value for a in Arch}:
        r.add("device.arch", f"{arch!r} is not one of arm64, armv7, x86_64")
    software = device.get("software", {})
    if not isinstance(software, dict) or not all(isinstance(v, str) for v in software.values()):
        r.add("device.software", "expected a table of strings")
        software = {}

    host, port = _listen(r, r.string(agent, "agent", "listen", "127.0.0.1:7601") or "")
    data_dir_s = r.string(agent, "agent", "data_dir", None)
    if data_dir_s is None and "data_dir" not in agent:
        r.add("agent.data_dir", "missing")
    key_s = r.string(agent, "agent", "public_key", None)
    root_s = r.string(agent, "agent", "root", None)
    if key_s is None and root_s is None:
        if "public_key" not in agent and "root" not in agent:
            r.add("agent.root", "missing (or public_key, for a one-key root)")
    elif key_s is not None and root_s is not None:
        r.add("agent.root", "set one of root or public_key (the root names the keys)")
    elif root_s is not None:
        _check_root(r, base / root_s)
    elif key_s is not None:
        _check_public_key(r, base / key_s)
    token, token_env, token_file = _token(r, agent, base)
    tls_cert = _file(r, agent, "tls_cert", base)
    tls_key = _file(r, agent, "tls_key", base)
    if (tls_cert is None) != (tls_key is None):
        r.add("agent.tls_key" if tls_key is None else "agent.tls_cert", "set both or neither")
    tls_client_ca = _file(r, agent, "tls_client_ca", base)
    if tls_client_ca is not None and tls_cert is None:
        r.add("agent.tls_client_ca", "needs tls_cert and tls_key (mutual TLS is TLS)")
    ca_bundle = _file(r, agent, "ca_bundle", base)
    pin = _pin(r, agent)
    run_as, run_as_uid, run_as_gid = _run_as(r, app)

    mode = r.string(app, "app", "mode", "process") or "process"
    if mode not in ("process", "systemd"):
        r.add("app.mode", f"{mode!r} is not one of process, systemd")
    unit = r.string(app, "app", "unit", None)
    if mode == "systemd" and unit is None:
        r.add("app.unit", "required when app.mode = 'systemd'")
    containment = r.string(app, "app", "containment", "auto") or "auto"
    if containment not in CONTAINMENTS:
        r.add("app.containment", f"{containment!r} is not one of {', '.join(CONTAINMENTS)}")
    if mode == "systemd" and "run_as" in app:
        r.add("app.run_as", "process mode only (a systemd unit sets User= itself)")

    cfg = AgentConfig(
        device_id=device_id or "",
        hardware=hardware or "",
        arch=arch,
        data_dir=base / (data_dir_s or "."),
        public_key=base / key_s if key_s is not None else None,
        root=base / root_s if root_s is not None else None,
        token=token,
        token_env=token_env,
        software={str(k): v for k, v in software.items()},
        host=host,
        port=port,
        keep_releases=r.integer(agent, "agent", "keep_releases", 2, 1),
        health_timeout_s=r.number(agent, "agent", "health_timeout_s", 20.0, 0.1),
        probe_interval_s=r.number(agent, "agent", "probe_interval_s", 5.0, 0.05),
        max_unpacked_mb=r.integer(agent, "agent", "max_unpacked_mb", 2048, 1),
        max_members=r.integer(agent, "agent", "max_members", 20000, 1),
        reserve_mb=r.integer(agent, "agent", "reserve_mb", 0, 0),
        stop_grace_s=r.number(agent, "agent", "stop_grace_s", 5.0, 0.0),
        app_mode=mode,
        app_unit=unit,
        app_port=min(r.integer(app, "app", "port", 8080, 1), 65535),
        systemctl=r.string(app, "app", "systemctl", "systemctl") or "systemctl",
        token_file=token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        ca_bundle=ca_bundle,
        fetch_pin_sha256=pin,
        min_fetch_kbps=r.number(agent, "agent", "min_fetch_kbps", 1.0, 0.0),
        fetch_rate_window_s=r.number(agent, "agent", "fetch_rate_window_s", 60.0, 0.1),
        containment=containment,
        systemd_run=r.string(app, "app", "systemd_run", "systemd-run") or "systemd-run",
        run_as=run_as,
        run_as_uid=run_as_uid,
        run_as_gid=run_as_gid,
        source=source,
        trial_s=r.number(agent, "agent", "trial_s", 300.0, 1.0),
        trial_max_starts=r.integer(agent, "agent", "trial_max_starts", 3, 1),
        on_commit=_hook(r, agent, "on_commit", base),
        on_revert=_hook(r, agent, "on_revert", base),
        mqtt=_mqtt(r, data, device_id, ca_bundle, base),
        http_listen="mqtt" not in data or "listen" in agent,
    )
    if r.problems:
        raise ValidationError(r.problems)
    return cfg


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate ``agent.toml``; every problem names the file and the field."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ValidationError([f"{source}: cannot read: {exc.strerror}"]) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError([f"{source}: not valid TOML: {exc}"]) from exc
    return parse_config(data, source.absolute())
