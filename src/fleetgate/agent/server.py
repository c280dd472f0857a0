"""The agent's HTTP server (aiohttp): authentication and the ``/v1/*`` routes.

Contract (docs/protocol.md §1–3):
- Every request is authenticated before routing, the token first: a missing or wrong bearer
  token (``hmac.compare_digest``) or a missing device header → 401 ``unauthorized``, whatever
  the device header says (an unauthenticated caller cannot tell which device ids exist); only
  then a ``X-Fleetgate-Device`` naming another device → 403 ``wrong-device``.
- Every answer is JSON ``{"error","message","retryable"}`` when it is not a 2xx: a body that is
  not JSON, too deep (``RecursionError``) or too large → 400/413, an unexpected exception →
  500 ``internal`` (logged); aiohttp never answers with its plain-text pages.
- TLS when ``tls_cert``/``tls_key`` are set (``tls_client_ca``: clients must present a
  certificate it signed). ``ssl`` contexts are built only then.
- ``serve(config)`` runs until SIGTERM/SIGINT, then stops the app and exits 0.
- The token never reaches a log line; aiohttp's access log is off (it would log headers'
  neighbours and costs memory on a small board), the agent logs each command itself.

Light by design: imports the standard library, aiohttp and fleetgate's agent-safe modules only
(a test checks ``sys.modules`` in a fresh interpreter).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fleetgate import __version__
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.reply import error_body
from fleetgate.agent.service import AgentService
from fleetgate.agent.tls import server_tls
from fleetgate.errors import InputError

log = logging.getLogger("fleetgate.agent")

SERVICE: web.AppKey[AgentService] = web.AppKey("service", AgentService)
MAX_LOG_LINES = 1000
# 4 MiB: a stage body carries the signed manifest, whose file list grows ~130 B a file.
MAX_BODY = 4 * 1024 * 1024


class RingHandler(logging.Handler):
    """Keeps the agent's recent log lines for ``GET /v1/logs``."""

    def __init__(self, size: int = MAX_LOG_LINES) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # logging must never take the agent down
            self.handleError(record)


RING = RingHandler()


def _json(code: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=code)


def _err(code: int, error: str, message: str) -> web.Response:
    return _json(code, error_body(error, message))


def make_app(service: AgentService) -> web.Application:
    config = service.config
    token = config.token.encode()

    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        good = scheme.lower() == "bearer" and hmac.compare_digest(
            presented.encode("utf-8", "replace"), token
        )
        if not good:
            return _err(401, "unauthorized", "missing or wrong bearer token")
        device = request.headers.get("X-Fleetgate-Device")
        if device is None:
            return _err(401, "unauthorized", "missing X-Fleetgate-Device header")
        if device != config.device_id:
            return _err(403, "wrong-device", "this agent is not the requested device")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _err(404, "not-found", f"no such endpoint: {request.path}")
        except web.HTTPMethodNotAllowed:
            return _err(405, "method-not-allowed", f"{request.method} {request.path}")
        except web.HTTPRequestEntityTooLarge:
            return _err(413, "too-large", f"body over {MAX_BODY} bytes")
        except web.HTTPException as exc:
            return _err(exc.status, "bad-request" if exc.status < 500 else "internal", exc.reason)
        except Exception as exc:  # never aiohttp's plain-text 500
            log.exception("%s %s failed", request.method, request.path)
            return _err(500, "internal", f"{type(exc).__name__}: {exc}")

    app = web.Application(middlewares=[auth], client_max_size=MAX_BODY)
    app[SERVICE] = service

    async def read(request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        code, body = await answer_read(service, name, dict(request.query))
        return _json(code, body)

    def command(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                body = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                return _err(400, "bad-request", "body is not valid JSON")
            except RecursionError:  # e.g. 400k nested lists: the C parser gives up
                return _err(400, "bad-request", "body is nested too deeply")
            reply = await service.execute(name, body)
            return _json(reply.code, reply.body)

        return handle

    for name in READS:
        app.router.add_get(f"/v1/{name}", read)
    for name in ("stage", "activate", "rollback", "commit"):
        app.router.add_post(f"/v1/{name}", command(name))
    return app


READS = ("ping", "facts", "health", "logs")


async def answer_read(service: AgentService, name: str, params: Any) -> tuple[int, dict[str, Any]]:
    """A read's answer (status, body), whichever channel asked: HTTP's query string, or the
    body of an MQTT command message (``{"lines": 200}``)."""
    config = service.config
    if name == "ping":
        return 200, {
            "id": config.device_id,
            "ok": True,
            "agent_version": __version__,
            "uptime_s": service.uptime_s(),
        }
    if name == "facts":
        return 200, await service.facts()
    if name == "health":
        return 200, await service.health()
    if name == "logs":
        raw = params.get("lines", 200) if isinstance(params, dict) else 200
        try:
            lines = int(raw)
        except (TypeError, ValueError):
            return 400, error_body("bad-request", "lines: expected an integer")
        lines = max(0, min(lines, MAX_LOG_LINES))
        app_lines = list(service.supervisor.logs)[-lines:] if lines else []
        agent_lines = list(RING.lines)[-lines:] if lines else []
        return 200, {"app": app_lines, "agent": agent_lines}
    return 404, error_body("not-found", f"no such command: {name}")


def setup_logging() -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    RING.setFormatter(fmt)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    root = logging.getLogger("fleetgate.agent")
    root.setLevel(logging.INFO)
    root.handlers[:] = [RING, stderr]
    root.propagate = False


async def serve(config: AgentConfig) -> int:
    """Run the agent until SIGTERM/SIGINT. Returns the process exit code."""
    setup_logging()
    tls = server_tls(config)  # a bad certificate fails here, before the app is started
    service = AgentService(config)
    await service.start()
    link = None
    if config.mqtt is not None:
        from fleetgate.agent.mqtt_serve import open_link

        try:
            link = open_link(config, service)
        except InputError:
            await service.shutdown()
            raise
    runner = web.AppRunner(make_app(service), access_log=None, handle_signals=False)
    await runner.setup()
    if config.http_listen:
        try:
            site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            await service.shutdown()
            raise InputError(
                f"{config.source}: agent.listen: cannot listen on {config.host}:{config.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        log.info(
            "agent %s %s listening on %s://%s:%d, data dir %s, current %s",
            config.device_id,
            __version__,
            "http" if config.tls_cert is None else "https",
            config.host,
            config.port,
            config.data_dir,
            service.state.current,
        )
    link_task = None
    if link is not None:
        link_task = asyncio.create_task(link.run())
        log.info(
            "agent %s %s reachable through %s as %s, data dir %s, current %s",
            config.device_id,
            __version__,
            link.broker.key,
            link.device_id,
            config.data_dir,
            service.state.current,
        )
    from fleetgate.agent.hygiene import hygiene_warnings

    for line in hygiene_warnings(config):
        log.warning("%s", line)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    if link is not None and link_task is not None:
        await link.stop()
        await link_task
    await runner.cleanup()
    await service.shutdown()
    return 0


def dump_config(config: AgentConfig) -> str:
    """The effective configuration as JSON, token excluded (for ``--check``)."""
    return json.dumps(
        {
            "device": {"id": config.device_id, "hardware": config.hardware, "arch": config.arch},
            "agent": {
                "listen": f"{config.host}:{config.port}",
                "data_dir": str(config.data_dir),
                "root": str(config.root) if config.root else None,
                "public_key": str(config.public_key) if config.public_key else None,
                "trial_s": config.trial_s,
                "trial_max_starts": config.trial_max_starts,
                "on_commit": None if config.on_commit is None else str(config.on_commit),
                "on_revert": None if config.on_revert is None else str(config.on_revert),
                "tls": config.tls_cert is not None,
                "mutual_tls": config.tls_client_ca is not None,
                "ca_bundle": None if config.ca_bundle is None else str(config.ca_bundle),
                "fetch_pinned": config.fetch_pin_sha256 is not None,
                "http": config.http_listen,
            },
            "mqtt": None
            if config.mqtt is None
            else {
                "broker": config.mqtt.broker,
                "username": config.mqtt.username,
                "password": config.mqtt.password is not None,
                "client_id": config.mqtt.client_id or config.device_id,
                "session_expiry_s": config.mqtt.session_expiry_s,
            },
            "app": {
                "mode": config.app_mode,
                "port": config.app_port,
                "unit": config.app_unit,
                "run_as": config.run_as,
                "containment": config.containment,
            },
        },
        indent=2,
    )
