"""TLS for the agent: its server's context and the one its downloads use.

Contract:
- ``server_tls(config)``: None without ``tls_cert``; else TLS 1.2+ with the certificate chain
  and key, and with ``tls_client_ca`` a client certificate signed by that CA is *required*
  (mutual TLS: the handshake fails before any HTTP is read).
- ``fetch_tls(config)``: None (aiohttp's default: the system trust store, hostname checked)
  unless ``ca_bundle`` or ``fetch_pin_sha256`` is set; then a verifying context trusting
  ``ca_bundle`` (or the system store) whose handshakes additionally fail unless the server's
  leaf certificate has the pinned sha256 (checked inside the handshake, so no byte of the
  response is read from an unpinned server). Pinning is on top of verification, never instead.
- Both raise ``InputError`` naming the config field when a file is unusable.

``ssl`` is imported only when one of these is configured (aiohttp loads it anyway; this keeps
the contexts, and their CA stores, out of an agent that does not use TLS).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from fleetgate.agent.config import AgentConfig
from fleetgate.errors import InputError

if TYPE_CHECKING:
    import ssl


def server_tls(config: AgentConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"{config.source}: agent.tls_cert/tls_key: unusable: {exc}") from exc
    if config.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(config.tls_client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"{config.source}: agent.tls_client_ca: unusable: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def cert_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def fetch_tls(config: AgentConfig) -> ssl.SSLContext | None:
    if config.ca_bundle is None and config.fetch_pin_sha256 is None:
        return None
    import ssl

    try:
        ctx = ssl.create_default_context(
            cafile=None if config.ca_bundle is None else str(config.ca_bundle)
        )
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"{config.source}: agent.ca_bundle: unusable: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    pin = config.fetch_pin_sha256
    if pin is not None:
        ctx.sslobject_class = _pinned_object_class(pin)
    return ctx


def _pinned_object_class(pin: str) -> Any:
    """An ``ssl.SSLObject`` whose handshake fails unless the peer's certificate hashes to
    ``pin`` (asyncio's TLS goes through ``SSLContext.wrap_bio``, i.e. this class)."""
    import ssl

    class PinnedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            got = cert_sha256(der) if der else "none"
            if got != pin:
                raise ssl.SSLCertVerificationError(
                    f"certificate sha256 {got} is not the pinned {pin} (agent.fetch_pin_sha256)"
                )

    return PinnedSSLObject
