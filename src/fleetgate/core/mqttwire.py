"""The agent protocol over MQTT 5: topic names and message payloads (pure, no I/O).

Contract (docs/transports.md "MQTT"; both ends import this module, the agent included, so it
uses only the standard library):
- Topics, for a device whose topic name is ``<device>`` (its inventory id, ``DEVICE_ID_RE``):
  ``fleetgate/v1/<device>/cmd`` (controller → device), ``fleetgate/v1/<device>/reply``
  (device → controller), ``fleetgate/v1/<device>/status`` (device, retained; the last will
  writes it too).
- A command message is JSON ``{"command", "device", "token", "body"}``: the vocabulary of
  ``transports/channel.py`` ``COMMANDS``, the device id the controller believes it addresses
  (HTTP's ``X-Fleetgate-Device``), the controller's per-device bearer token (HTTP's
  ``Authorization``), and the body ``AgentService.execute`` takes (``None`` or the read's
  parameters for a read). It travels with the MQTT 5 properties Response Topic (the device's
  reply topic) and Correlation Data (opaque bytes, echoed).
- A reply message is JSON ``{"status": <protocol status>, "body": <JSON body>}`` with the
  command's Correlation Data.
- A status message is JSON ``{"device", "online": bool, "at": unix seconds, ...}``; ``online``
  messages add what a heartbeat reader wants (``agent_version``, ``session``: an id fresh at
  each connection), offline ones a ``reason`` (``connection-lost`` from the last will,
  ``shutdown`` from a clean stop).
- ``parse_*`` return the message or raise ``WireError`` naming what is wrong; they never
  include a token in the message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

PREFIX = "fleetgate/v1/"
QOS = 1
# A topic name segment: the inventory's device id syntax, which has no '/', '+' or '#'.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_PAYLOAD = 4 * 1024 * 1024  # the HTTP agent's body bound (a stage carries the manifest)


class WireError(ValueError):
    """A message that does not have the protocol's shape."""


def valid_segment(name: str) -> bool:
    return bool(_SEGMENT_RE.match(name))


def cmd_topic(device: str) -> str:
    return f"{PREFIX}{device}/cmd"


def reply_topic(device: str) -> str:
    return f"{PREFIX}{device}/reply"


def status_topic(device: str) -> str:
    return f"{PREFIX}{device}/status"


# What the controller subscribes to (one subscription each for the whole fleet).
ALL_REPLIES = f"{PREFIX}+/reply"
ALL_STATUS = f"{PREFIX}+/status"


def split_topic(topic: str) -> tuple[str, str] | None:
    """``('rpi-07', 'reply')`` for ``fleetgate/v1/rpi-07/reply``; None for anything else."""
    if not topic.startswith(PREFIX):
        return None
    parts = topic[len(PREFIX) :].split("/")
    if len(parts) != 2 or not valid_segment(parts[0]):
        return None
    return parts[0], parts[1]


@dataclass(frozen=True, slots=True)
class Command:
    command: str
    device: str
    token: str = field(repr=False)
    body: Any


def encode_command(command: str, device: str, token: str, body: Any) -> bytes:
    return json.dumps(
        {"command": command, "device": device, "token": token, "body": body},
        separators=(",", ":"),
    ).encode()


def parse_command(payload: bytes) -> Command:
    doc = _load(payload)
    command, device, token = doc.get("command"), doc.get("device"), doc.get("token")
    if not isinstance(command, str) or not command:
        raise WireError("command: expected a non-empty string")
    if not isinstance(device, str):
        raise WireError("device: expected a string")
    if not isinstance(token, str):
        raise WireError("token: expected a string")
    return Command(command, device, token, doc.get("body"))


def encode_reply(status: int, body: Any) -> bytes:
    return json.dumps({"status": status, "body": body}, separators=(",", ":")).encode()


def parse_reply(payload: bytes) -> tuple[int, Any]:
    doc = _load(payload)
    status = doc.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise WireError("status: expected an integer 100..599")
    return status, doc.get("body")


def encode_status(device: str, online: bool, at: float, **extra: Any) -> bytes:
    return json.dumps(
        {"device": device, "online": online, "at": round(at, 3), **extra},
        separators=(",", ":"),
    ).encode()


def parse_status(payload: bytes) -> dict[str, Any]:
    doc = _load(payload)
    if not isinstance(doc.get("online"), bool):
        raise WireError("online: expected true or false")
    at = doc.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise WireError("at: expected a number")
    return doc


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise WireError(f"payload over {MAX_PAYLOAD} bytes")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise WireError("payload is not UTF-8 JSON") from None
    except RecursionError:
        raise WireError("payload is nested too deeply") from None
    if not isinstance(doc, dict):
        raise WireError("payload: expected a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where a broker listens: ``mqtt://host:port`` (TCP) or ``mqtts://host:port`` (TLS)."""

    host: str
    port: int
    tls: bool

    @property
    def key(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(url: str) -> tuple[BrokerAddress, str]:
    """``mqtt://host[:port][/<device>]`` → the broker and the path's device segment (``''`` when
    there is none). Ports default to 1883 (``mqtt``) and 8883 (``mqtts``). Raises ``WireError``
    naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise WireError(f"{url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    hostport, _, path = rest.partition("/")
    segment = path.strip("/")
    if segment and not valid_segment(segment):
        raise WireError(f"{url!r}: the path must be one device id ([A-Za-z0-9._-]{{1,128}})")
    if hostport.startswith("["):  # [::1]:1883
        host, _, tail = hostport[1:].partition("]")
        port_s = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_s = hostport.partition(":")
    tls = scheme == "mqtts"
    if not host:
        raise WireError(f"{url!r}: no broker host")
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise WireError(f"{url!r}: port must be 1..65535")
        port = int(port_s)
    else:
        port = 8883 if tls else 1883
    return BrokerAddress(host, port, tls), segment
