"""``fleetgate agent enroll``: a device introduces itself to the controller (docs/enrolment.md).

On the device: keeps (or makes, first time) its own Ed25519 key pair (``device.key``, 0600),
makes a new random credential (the bearer token the controller will present to this agent),
reads its facts (agent/facts.py), signs the enrolment with its key (core/enrolment.py), sends
it with the one-time enrolment token to ``POST {server}/api/v1/enroll``, and only when the
controller said yes writes the credential (``credential``, 0600) and the agent's config so
``fleetgate agent run`` uses it. A refusal changes nothing on the device.

Over ``https://`` (``--ca-file`` to trust a private CA); plain ``http://`` only to a loopback
server, since the credential travels in the request. Standard library, aiohttp and
cryptography only (the agent stays light).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fleetgate.agent.config import host_arch
from fleetgate.agent.facts import detect_hardware, inventory_facts
from fleetgate.core.enrolment import CREDENTIAL_PREFIX, proof_message
from fleetgate.core.model import DEVICE_ID_RE, NAME_RE
from fleetgate.errors import FleetgateError, InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 devices
    import tomli as tomllib

KEY_FILE = "device.key"
CREDENTIAL_FILE = "credential"
DEFAULT_PORT = 7601
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass(frozen=True)
class EnrolOptions:
    server: str
    token: str
    config: Path
    device_id: str | None = None
    address: str | None = None
    hardware: str | None = None
    group: str | None = None
    ca_file: Path | None = None


def _write_private(path: Path, data: bytes) -> None:
    """Written whole beside ``path`` then renamed in: 0600 from the first byte, never torn."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def load_or_make_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InputError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, pem)
    return key


def _public_b64(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return dict(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot read the agent config: {exc}") from None


def _check_server(server: str) -> str:
    parsed = urlparse(server)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(f"--server: expected an https:// URL, got {server!r}")
    if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK:
        raise InputError(
            "--server: plain http:// only to a loopback address (the device's credential "
            "travels in the request); use https:// (and --ca-file for a private CA)"
        )
    return server.rstrip("/")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    raise InputError(f"agent config: cannot write {type(value).__name__} values")


def dump_toml(doc: dict[str, Any]) -> str:
    """The small TOML subset agent.toml uses: tables (one level of sub-tables) of scalars."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for sub, sub_body in subs.items():
            table(f"{name}.{sub}", sub_body)

    for name, body in doc.items():
        if not isinstance(body, dict):
            raise InputError(f"agent config: top-level key {name!r} is not a table")
        table(name, body)
    return "\n".join(lines)


def _default_id() -> str:
    name = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:128]
    return cleaned or "device"


async def _post(opts: EnrolOptions, server: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {opts.token}"}
    raw = json.dumps(body).encode()
    return await _send(server, "/api/v1/enroll", raw, headers, opts.ca_file, 201, "enrolment")


async def _send(
    server: str,
    path: str,
    raw: bytes,
    headers: dict[str, str],
    ca_file: Path | None,
    ok: int,
    what: str,
) -> dict[str, Any]:
    import ssl

    import aiohttp

    tls: ssl.SSLContext | bool = True
    if ca_file is not None:
        try:
            tls = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"--ca-file: {ca_file}: {exc}") from None
    timeout = aiohttp.ClientTimeout(total=60, connect=10)
    headers = {**headers, "Content-Type": "application/json"}
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"{server}{path}", data=raw, headers=headers, ssl=tls) as resp,
        ):
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FleetgateError(f"{server}: cannot reach it: {exc}", retryable=True) from None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status != ok or not isinstance(doc, dict):
        err = doc.get("error", {}) if isinstance(doc, dict) else {}
        msg = err.get("message") if isinstance(err, dict) else None
        raise InputError(f"{server}: {what} refused (HTTP {status}): {msg or body[:200]!r}")
    return doc


@dataclass
class _Prepared:
    server: str
    config_path: Path
    doc: dict[str, Any]
    device: dict[str, Any]
    agent: dict[str, Any]
    listen: str
    data_dir: Path
    credential: str
    body: dict[str, Any]


async def enroll(opts: EnrolOptions) -> dict[str, Any]:
    """Enrol this device; returns the controller's answer (id, group, state)."""
    prep = _prepare(opts)
    answer = await _post(opts, prep.server, prep.body)
    _finish(opts, prep, answer)
    return answer


def _prepare(opts: EnrolOptions) -> _Prepared:
    server = _check_server(opts.server)
    if not opts.token.strip():
        raise InputError("--token: empty; give the enrolment token (fleetgate enroll create)")
    config_path = opts.config.absolute()
    base = config_path.parent
    doc = _read_config(config_path)
    device = dict(doc.get("device", {}))
    agent = dict(doc.get("agent", {}))
    device_id = opts.device_id or device.get("id") or _default_id()
    if not DEVICE_ID_RE.match(str(device_id)):
        raise InputError(f"--id: {device_id!r} must be 1-128 characters of A-Z a-z 0-9 . _ -")
    hardware = opts.hardware or device.get("hardware") or detect_hardware()
    if not hardware or not NAME_RE.match(str(hardware)):
        raise InputError(
            "--hardware: this board does not name itself (no device-tree or DMI model); "
            "give --hardware NAME"
        )
    arch = str(device.get("arch") or host_arch())
    listen = str(agent.get("listen") or "")
    address = opts.address
    if address is None:
        port = int(listen.rpartition(":")[2]) if listen else DEFAULT_PORT
        address = f"http://{socket.gethostname()}:{port}"
    # Over MQTT the agent dials out and needs no listener: the broker's port in the address
    # is not one for the agent to listen on.
    over_mqtt = urlparse(address).scheme in ("mqtt", "mqtts")
    if not listen and not over_mqtt:
        port = urlparse(address).port or DEFAULT_PORT
        host = urlparse(address).hostname or ""
        listen = f"127.0.0.1:{port}" if host in _LOOPBACK else f"0.0.0.0:{port}"
    data_dir = base / str(agent.get("data_dir") or "data")
    data_dir.mkdir(parents=True, exist_ok=True)
    software = {str(k): str(v) for k, v in dict(device.get("software", {})).items()}

    key = load_or_make_key(base / KEY_FILE)
    credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    message = proof_message(
        token=opts.token.strip(), device_id=device_id, address=address, credential=credential
    )
    body: dict[str, Any] = {
        "id": device_id,
        "address": address,
        "public_key": _public_b64(key),
        "credential": credential,
        "signature": base64.b64encode(key.sign(message)).decode(),
        "facts": inventory_facts(str(hardware), arch, data_dir, software),
    }
    if opts.group is not None:
        body["group"] = opts.group
    return _Prepared(server, config_path, doc, device, agent, listen, data_dir, credential, body)


def _finish(opts: EnrolOptions, prep: _Prepared, answer: dict[str, Any]) -> None:
    """The controller holds the credential now: the device keeps it and runs with it."""
    base, config_path, server = prep.config_path.parent, prep.config_path, prep.server
    device, agent, doc, listen = prep.device, prep.agent, prep.doc, prep.listen
    device_id, hardware, arch = (
        prep.body["id"],
        prep.body["facts"]["hardware"],
        prep.body["facts"]["arch"],
    )
    data_dir = prep.data_dir
    _write_private(base / CREDENTIAL_FILE, (prep.credential + "\n").encode())
    device.update({"id": device_id, "hardware": str(hardware), "arch": arch})
    agent.pop("token_env", None)
    agent["data_dir"] = os.path.relpath(data_dir, base)
    if listen:
        agent["listen"] = listen
    agent["token_file"] = CREDENTIAL_FILE
    if "root" not in agent and "public_key" not in agent:
        trust = answer.get("trust")
        if isinstance(trust, dict) and isinstance(trust.get("text"), str):
            name = "root.json" if trust.get("kind") == "root" else "signing.pub"
            (base / name).write_text(trust["text"], encoding="utf-8")
            agent["root" if name == "root.json" else "public_key"] = name
    if opts.ca_file is not None and "ca_bundle" not in agent and server.startswith("https"):
        agent["ca_bundle"] = str(opts.ca_file.absolute())
    new_doc = {**doc, "device": device, "agent": agent}
    address = urlparse(str(prep.body["address"]))
    if address.scheme in ("mqtt", "mqtts") and "mqtt" not in doc:
        # An agent reached over MQTT dials out to the broker its address names.
        new_doc["mqtt"] = {"broker": f"{address.scheme}://{address.netloc}"}
    if config_path.exists():
        config_path.with_name(config_path.name + ".before-enrol").write_bytes(
            config_path.read_bytes()
        )
    _write_private(config_path, dump_toml(new_doc).encode())


async def send_facts(server: str, config: Path, ca_file: Path | None = None) -> dict[str, Any]:
    """Re-send this enrolled device's facts (``POST /api/v1/enroll/facts``), signed with
    ``device.key``: no token needed; run it when the device changed (a new disk, an OS
    upgrade) or at boot."""
    server = _check_server(server)
    raw, headers = _signed_facts(config)
    return await _send(server, "/api/v1/enroll/facts", raw, headers, ca_file, 200, "facts")


def _signed_facts(config: Path) -> tuple[bytes, dict[str, str]]:
    import hashlib
    from datetime import datetime, timezone

    from fleetgate.agent.config import load_config
    from fleetgate.core.enrolment import facts_message

    cfg = load_config(config)
    key_path = config.absolute().parent / KEY_FILE
    if not key_path.exists():
        raise InputError(f"{key_path}: no device key: enrol first (fleetgate agent enroll)")
    key = load_or_make_key(key_path)
    ts = datetime.now(timezone.utc).isoformat()
    facts = inventory_facts(cfg.hardware, cfg.arch, cfg.data_dir, dict(cfg.software))
    raw = json.dumps({"id": cfg.device_id, "ts": ts, "facts": facts}).encode()
    message = facts_message(
        device_id=cfg.device_id, ts=ts, body_sha256=hashlib.sha256(raw).hexdigest()
    )
    return raw, {"X-Fleetgate-Signature": base64.b64encode(key.sign(message)).decode()}
