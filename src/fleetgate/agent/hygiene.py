"""What an agent's configuration exposes: checked at start-up (``agent run``, ``agent check``).

Contract: ``hygiene_warnings(config)`` returns one line per problem, each naming the file and
the field, and never raises:
- a listen address that is not loopback without TLS (the token would cross the network in
  clear: anyone on the path can replay it);
- a token file or TLS private key that the group or others may read or write (the token *is*
  the device's credential);
- a trusted public key, CA bundle or client CA that the group or others may write (whoever
  can replace it decides which releases or clients the device trusts);
- a data dir that the group or others may write (whoever can write there can repoint
  ``current`` or rewrite ``state.json``).
The agent logs them as warnings; ``--strict`` refuses to run (exit 2) when there is any.

Standard library only.
"""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from fleetgate.agent.config import AgentConfig

GROUP_OTHER_RW = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH
GROUP_OTHER_W = stat.S_IWGRP | stat.S_IWOTH


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _mode_problem(path: Path, forbidden: int, what: str) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # unreadable files are refused by the config check itself
    if mode & forbidden:
        return f"{path} is {what} (mode {stat.S_IMODE(mode):04o})"
    return None


def hygiene_warnings(config: AgentConfig) -> list[str]:
    where = str(config.source)
    out: list[str] = []
    if config.http_listen and config.tls_cert is None and not is_loopback(config.host):
        out.append(
            f"{where}: agent.listen: {config.host}:{config.port} is not loopback and TLS is "
            f"off: the bearer token crosses the network in clear (set tls_cert and tls_key)"
        )
    if config.mqtt is not None:
        from fleetgate.core.mqttwire import WireError, parse_broker

        try:
            broker, _ = parse_broker(config.mqtt.broker)
        except WireError:
            broker = None  # refused by the config check itself
        if broker is not None and not broker.tls and not is_loopback(broker.host):
            out.append(
                f"{where}: mqtt.broker: {broker.key} is not loopback and TLS is off: the "
                f"bearer token and the broker password cross the network in clear (mqtts://)"
            )
    secrets = [("token_file", config.token_file), ("tls_key", config.tls_key)]
    for key, path in secrets:
        if path is not None:
            problem = _mode_problem(path, GROUP_OTHER_RW, "readable or writable by group/others")
            if problem:
                out.append(f"{where}: agent.{key}: {problem}; chmod 600")
    trusted = [
        ("public_key", config.public_key),
        ("root", config.root),
        ("ca_bundle", config.ca_bundle),
        ("tls_client_ca", config.tls_client_ca),
        ("tls_cert", config.tls_cert),
        ("data_dir", config.data_dir),
    ]
    for key, maybe in trusted:
        if maybe is not None:
            problem = _mode_problem(maybe, GROUP_OTHER_W, "writable by group/others")
            if problem:
                out.append(f"{where}: agent.{key}: {problem}; chmod go-w")
    return out
