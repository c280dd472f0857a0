"""The real agent behind a ``DeviceLink``: its settings from ``[mqtt]`` and its dispatcher.

Contract:
- ``link_settings(config)`` → ``LinkSettings`` from ``AgentConfig.mqtt`` (broker, username —
  default the device id —, password, client id, CA bundle for ``mqtts``, session expiry,
  keepalive); the online status carries ``agent_version``.
- ``agent_dispatcher(service)`` → the ``execute(command, body) -> (status, body)`` the link
  calls: reads answer as ``GET /v1/<read>`` does (``server.answer_read``), commands go to
  ``AgentService.execute`` — the same seq record, the same idempotency as over HTTP.
- ``open_link(config, service)`` → a ``DeviceLink`` whose token is the agent's bearer token.

Imported only when ``[mqtt]`` is configured: it needs the ``mqtt`` extra (aiomqtt); without
it the agent stops with a one-line error saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetgate import __version__
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.service import AgentService
from fleetgate.errors import InputError

if TYPE_CHECKING:
    from fleetgate.agent.mqtt_link import DeviceLink, Execute, LinkSettings

READS = frozenset({"ping", "facts", "health", "logs"})
CHANGES = frozenset({"stage", "activate", "commit", "rollback"})


def link_settings(config: AgentConfig) -> LinkSettings:
    from fleetgate.agent.mqtt_link import LinkSettings

    m = config.mqtt
    if m is None:
        raise InputError(f"{config.source}: mqtt.broker: not configured")
    tls = None
    if m.ca_bundle is not None:
        import ssl

        try:
            tls = ssl.create_default_context(cafile=str(m.ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"{config.source}: mqtt.ca_bundle: unusable: {exc}") from exc
    return LinkSettings(
        broker=m.broker,
        device_id=config.device_id,
        username=m.username,
        password=m.password,
        client_id=m.client_id,
        tls=tls,
        session_expiry_s=m.session_expiry_s,
        keepalive_s=m.keepalive_s,
        status={"agent_version": __version__},
    )


def agent_dispatcher(service: AgentService) -> Execute:
    from fleetgate.agent.server import answer_read

    async def execute(command: str, body: Any) -> tuple[int, Any]:
        if command in READS:
            return await answer_read(service, command, body)
        if command not in CHANGES:
            from fleetgate.agent.reply import error_body

            return 404, error_body("not-found", f"no such command: {command}")
        reply = await service.execute(command, body)
        return reply.code, reply.body

    return execute


def open_link(config: AgentConfig, service: AgentService) -> DeviceLink:
    try:
        import aiomqtt  # noqa: F401  (fail here, in one line, rather than at first connect)

        from fleetgate.agent.mqtt_link import DeviceLink
    except ImportError as exc:
        raise InputError(
            f"{config.source}: mqtt: needs the 'mqtt' extra (pip install 'fleetgate[mqtt]'): {exc}"
        ) from exc
    return DeviceLink(link_settings(config), agent_dispatcher(service), token=config.token)
