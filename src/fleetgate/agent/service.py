"""The agent's core: lifecycle, crash reconciliation, idempotent command dispatch, reports.

Contract:
- ``start()`` makes the data dir truthful before anything else happens: partial work is
  deleted, ``state.json`` is reconciled with the ``current`` link (the link wins), an app
  orphaned by a crashed agent is reaped, then the current release's app is started.
- ``execute(command, body)`` applies the idempotency rules of docs/protocol.md §4: commands run
  one at a time; each is recorded ``in-progress`` (persisted) before it acts and its reply is
  persisted after; a repeat is answered from the record. A ``seq`` outside its ``seq_base``
  window, or too far ahead (``core.seqwindow``), is refused without being recorded. A command
  whose ``in-progress`` record cannot be written (disk full) is answered ``507`` and leaves no
  record, in memory or on disk: the same seq runs once there is space again.
- Safe mode: when ``state.json`` and its previous copy are both unreadable (``StateLost``) or
  gone while releases are on disk, the seq history is unknown. The agent still starts the
  current release and answers reads, but refuses every command with ``409 state-lost`` until
  an operator runs ``fleetgate agent reset-state`` (it never guesses ``last_seq = 0``).
- ``facts()``, ``health()``, ``logs()`` never wait for a running command: staging does its
  blocking work in threads, so the agent keeps answering while it downloads and unpacks.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from fleetgate import __version__
from fleetgate.agent import commands, trial
from fleetgate.agent.cgroup import Cgroups
from fleetgate.agent.cgroup import choose as choose_containment
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.facts import inventory_facts
from fleetgate.agent.probes import (
    HealthProber,
    ProbeTarget,
    disk_free_mb,
    gpu_percent,
    memory_mb,
    reportable,
    temperature_c,
)
from fleetgate.agent.releases import ReleaseStore
from fleetgate.agent.reply import CommandError, Reply, bad_request, error_body
from fleetgate.agent.state import (
    DONE,
    IN_PROGRESS,
    RETRYABLE,
    AgentState,
    CommandRecord,
    Decision,
    StateLost,
    classify,
    load_state,
    prev_path,
    save_state,
)
from fleetgate.agent.supervisor import ProcessSupervisor, SystemdSupervisor, reap_orphan
from fleetgate.agent.trust import TrustStore
from fleetgate.core.model import ArtifactKind
from fleetgate.core.seqwindow import MAX_SEQ, jump_problem, window_problem
from fleetgate.errors import FleetgateError

log = logging.getLogger("fleetgate.agent")

Handler = Callable[["AgentService", dict[str, Any], CommandRecord, bool], Awaitable[Reply]]
HANDLERS: dict[str, Handler] = {
    "stage": commands.stage,
    "activate": commands.activate,
    "rollback": commands.rollback,
    "commit": commands.commit,
}


class AgentService:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = ReleaseStore(config.data_dir)
        self.state_path = config.data_dir / "state.json"
        self.state = AgentState()
        self.state_lost: str | None = None  # safe mode: why the seq history is unknown
        self.trust = TrustStore(config.data_dir, config.root, config.public_key)
        self.activity = "starting"
        # Why the current release was not started at start-up (a slot that fails its check);
        # reported in facts until a switch succeeds.
        self.integrity_error: str | None = None
        self.current_kind: ArtifactKind | None = None
        self.reload_error: str | None = None  # a config release's failed reload command
        self.started_at = time.monotonic()
        self.app_started_at = self.started_at  # the last (re)start of the release (trial.watch)
        self.supervisor: ProcessSupervisor | SystemdSupervisor
        if config.app_mode == "systemd":
            assert config.app_unit is not None
            self.supervisor = SystemdSupervisor(config.app_unit, config.systemctl)
        else:
            self.supervisor = ProcessSupervisor(config.data_dir, config.stop_grace_s)
            self.supervisor.on_line = lambda line: trial.log_line(self, line)
        self.containment = "systemd unit" if config.app_mode == "systemd" else "process group"
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._prober: HealthProber | None = None
        self._probe_task: asyncio.Task[None] | None = None

    def trusted_root(self) -> Any:
        """The newest verified ``artifacts.root.Root``: releases need a threshold of its release
        keys (``cryptography`` is imported here, on first use, not at start-up)."""
        try:
            return self.trust.current()
        except FleetgateError as exc:
            log.error("trusted root unusable: %s", exc)
            raise CommandError(500, "internal", f"trusted root unusable: {exc}") from exc

    def trusted_key(self) -> Any:
        """What ``artifacts.signing.verify_manifest`` takes as trust: the current root."""
        return self.trusted_root()

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def lock(self) -> asyncio.Lock:
        """Held while a command (or a self-revert) runs: one change of the device at a time."""
        return self._lock

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "agent not started"
        return self._session

    @property
    def prober(self) -> HealthProber:
        assert self._prober is not None, "agent not started"
        return self._prober

    async def start(self) -> None:
        from fleetgate.agent.tls import fetch_tls

        tls = fetch_tls(self.config)  # None unless ca_bundle / fetch_pin_sha256 are set
        connector = None if tls is None else aiohttp.TCPConnector(ssl=tls)
        self._session = aiohttp.ClientSession(connector=connector)
        self._prober = HealthProber(self._session)
        await asyncio.to_thread(self._reconcile)
        if isinstance(self.supervisor, ProcessSupervisor):
            cgroups = await asyncio.to_thread(
                choose_containment,
                self.config.containment,
                self.config.data_dir,
                self.config.systemd_run,
            )
            self.supervisor.cgroups = cgroups
            if isinstance(cgroups, Cgroups):
                self.containment = f"cgroup v2 ({cgroups.parent})"
            elif cgroups is not None:
                self.containment = f"systemd scopes ({cgroups.systemd_run})"
            elif self.config.containment != "process-group":
                log.error(
                    "containment %s not available here: a release's setsid children can "
                    "outlive a rollback",
                    self.config.containment,
                )
            log.info("releases run in: %s", self.containment)
            await reap_orphan(self.config.data_dir, self.config.stop_grace_s, cgroups)
        current = self.state.current
        problem = trial.startup_problem(self.state, self.config.trial_max_starts)
        if current is not None and problem is not None:
            # The start-up check, before the agent serves: a release on trial that used up its
            # starts (it kills the agent or the device) is not started again.
            try:
                if await trial.revert(self, *problem):
                    current = None  # the revert started the release it went back to
            except Exception:  # the agent must come up and report, whatever happened
                log.exception("self-revert of %s failed", current)
        if current is not None:
            try:
                # The slot's files are checked against its signed list, and the stored manifest
                # against the digest recorded when the stage accepted it: hashlib only, so
                # start-up stays free of cryptography (activate and rollback verify signatures).
                try:
                    manifest, raw, _sig = await asyncio.to_thread(self.store.load_manifest, current)
                except (OSError, ValueError, FleetgateError) as exc:
                    self.integrity_error = f"{current}: stored manifest unreadable: {exc}"
                    raise
                slot_problem = await commands.startup_check(self, current, manifest, raw)
                if slot_problem is None:
                    await trial.count_start(self)  # on disk before the start (off trial: no-op)
                    await commands.start_release(self, current, manifest)
                else:
                    self.integrity_error = slot_problem
                    log.error("not starting %s: integrity error: %s", current, slot_problem)
            except Exception:  # a broken release must not keep the agent from answering
                log.exception("could not start current release %s", current)
        self.activity = "idle"
        self._probe_task = asyncio.create_task(self._probe_loop(), name="health-prober")

    async def shutdown(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        if isinstance(self.supervisor, ProcessSupervisor):
            await self.supervisor.stop()
        if self._session is not None:
            await self._session.close()

    def _reconcile(self) -> None:
        """Make ``state.json`` agree with the disk after whatever happened (crash, power cut)."""
        self.store.ensure_layout()
        if self.config.run_as is not None:
            # The release's user may enter the data dir (to reach its own release by path)
            # but not list it or read state.json / app.json (0600, root's).
            self.config.data_dir.chmod(0o711)
            self.store.releases_dir.chmod(0o711)
        for leftover in self.store.cleanup_leftovers():
            log.warning("removed leftover %s", leftover)
        try:
            state = load_state(self.state_path)
        except StateLost as exc:
            self._enter_safe_mode(str(exc))
            return
        fresh = not self.state_path.exists() and not prev_path(self.state_path).exists()
        if fresh and (self.store.list_releases() or self.store.link_target_name() is not None):
            self._enter_safe_mode(f"{self.state_path} is gone but releases are on disk")
            return
        link = self.store.read_current()
        if link is None and self.store.exists(state.current):
            assert state.current is not None
            # No (or a dangling) link but a recorded release on disk: re-point the link.
            self.store.switch_current(state.current)
            link = state.current
        elif link is None and self.store.link_target_name() is not None:
            self.store.clear_current()
        if link != state.current:
            rec = state.interrupted()
            old = state.current
            if rec is not None and rec.command == "rollback" and rec.params.get("to") == link:
                state.previous = None  # a rollback died after its switch
            elif self.store.exists(old) and old != link:
                state.previous = old  # an activate died after its switch
            log.warning("current link says %s, state said %s: the link wins", link, old)
            state.current = link
        trial.reconcile(state, link, state.interrupted())
        if state.previous == state.current or not self.store.exists(state.previous):
            state.previous = None
        self.state = state
        try:
            save_state(self.state_path, state)
        except OSError as exc:
            # A full disk must not keep the agent (and so the app) from starting: the file on
            # disk is still the last good one, and commands are refused (507) until it is
            # writable again.
            log.error("could not save %s at start-up: %s", self.state_path, exc)

    def _enter_safe_mode(self, why: str) -> None:
        """Run what the ``current`` link says, accept no command, and touch no state file
        (they are the evidence an operator needs)."""
        self.state_lost = why
        self.state = AgentState(current=self.store.read_current())
        log.error(
            "SAFE MODE: %s; the seq history is unknown, every command is refused until "
            "`fleetgate agent reset-state --config %s --last-seq N` is run",
            why,
            self.config.source,
        )

    async def save(self) -> None:
        await asyncio.to_thread(save_state, self.state_path, self.state)

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self.prober.tick()
            except Exception:  # a probe must never kill the prober
                log.exception("health probe failed")
            try:
                await trial.watch(self)
            except Exception:  # nor a failed revert the agent
                log.exception("trial watch failed")
            await asyncio.sleep(self.config.probe_interval_s)

    def set_probe_target(self, target: ProbeTarget | None) -> None:
        self.prober.set_target(target)

    # -- commands -------------------------------------------------------------------------------
    async def execute(self, command: str, body: Any) -> Reply:
        try:
            seq, seq_base, deployment_id = _validate(command, body)
        except CommandError as exc:
            return exc.reply()
        if self.state_lost is not None:
            msg = (
                f"safe mode: {self.state_lost}; an operator must run `fleetgate agent reset-state`"
            )
            return CommandError(409, "state-lost", msg).reply()
        if self._lock.locked():
            rec = self.state.commands.get(seq)
            same = rec is not None and (rec.command, rec.deployment_id) == (command, deployment_id)
            if same and rec is not None and rec.status == IN_PROGRESS:
                return CommandError(
                    409, "in-progress", f"seq {seq} is still executing", retryable=True
                ).reply()
            return CommandError(
                409, "busy", "another command is executing; seq not consumed", retryable=True
            ).reply()
        async with self._lock:
            return await self._execute_locked(command, body, seq, seq_base, deployment_id)

    async def _execute_locked(
        self, command: str, body: dict[str, Any], seq: int, seq_base: int, deployment_id: str
    ) -> Reply:
        decision = classify(self.state, seq, command, deployment_id, seq_base)
        if decision is Decision.REPLAY:
            rec = self.state.commands[seq]
            assert rec.code is not None and rec.body is not None
            return Reply(rec.code, {**rec.body, "replayed": True})
        if decision is Decision.STALE:
            msg = f"seq {seq} is older than last_seq {self.state.last_seq}"
            return CommandError(409, "stale-seq", msg).reply()
        if decision is Decision.OUT_OF_RANGE:
            msg = jump_problem(seq_base, self.state.last_seq) or f"seq {seq} out of range"
            return CommandError(409, "seq-out-of-range", msg).reply()
        if decision is Decision.CONFLICT:
            rec = self.state.commands[seq]
            msg = f"seq {seq} was used for {rec.command} of deployment {rec.deployment_id}"
            return CommandError(409, "seq-conflict", msg).reply()
        if decision is Decision.IN_PROGRESS:  # pragma: no cover - excluded by the lock
            return CommandError(
                409, "in-progress", f"seq {seq} is executing", retryable=True
            ).reply()
        again = decision is Decision.REEXECUTE
        old = self.state.commands.get(seq)
        rec = CommandRecord(
            seq,
            command,
            deployment_id,
            IN_PROGRESS,
            params=dict(old.params) if again and old else {},
        )
        before = (dict(self.state.commands), self.state.last_seq)
        self.state.record(rec)
        try:
            await self.save()
        except OSError as exc:
            # Not recorded, so not done: forget it entirely (the same seq must run later).
            self.state.commands, self.state.last_seq = before
            log.error("%s seq=%d not recorded, refused: %s", command, seq, exc)
            return _os_error_reply(exc, f"cannot record {command} seq {seq}").reply()
        log.info(
            "%s seq=%d deployment=%s%s",
            command,
            seq,
            deployment_id,
            " (re-executed)" if again else "",
        )
        try:
            reply = await HANDLERS[command](self, body, rec, again)
        except CommandError as exc:
            reply = exc.reply()
        except OSError as exc:
            log.exception("%s seq=%d failed", command, seq)
            reply = _os_error_reply(exc, f"{command} seq {seq}").reply()
            if exc.errno in DISK_FULL:
                # The disk filled up under the command: it is not done, so it is not kept
                # (a recorded 507 would replay for ever); the same seq runs again later.
                self.activity = "idle"
                self.state.commands, self.state.last_seq = before
                try:
                    await self.save()
                except OSError as again_exc:
                    log.error("%s seq=%d: record not removed on disk: %s", command, seq, again_exc)
                return reply
        except Exception as exc:
            log.exception("%s seq=%d failed", command, seq)
            reply = Reply(500, error_body("internal", f"{type(exc).__name__}: {exc}"))
        finally:
            self.activity = "idle"
        rec.status = RETRYABLE if reply.retryable else DONE
        rec.code, rec.body = reply.code, reply.body
        try:
            await self.save()
        except OSError as exc:
            # The command ran; its answer stays in memory. On disk it is still in-progress, so
            # an agent restarted before the next save re-executes it (every command is safe
            # to repeat), which is what the record promises.
            log.error("%s seq=%d: outcome not persisted: %s", command, seq, exc)
        log.info(
            "%s seq=%d -> %d %s",
            command,
            seq,
            reply.code,
            reply.body.get("status") or reply.body.get("error"),
        )
        return reply

    # -- reports --------------------------------------------------------------------------------
    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started_at, 3)

    async def facts(self) -> dict[str, Any]:
        rec = self.state.interrupted()
        cfg = self.config
        return {
            "id": cfg.device_id,
            # hardware, arch, ram_mb, disk_mb, disk_free_mb, gpu, software (agent/facts.py)
            **inventory_facts(cfg.hardware, cfg.arch, cfg.data_dir, cfg.software),
            "reserve_mb": cfg.reserve_mb,
            "agent_version": __version__,
            "current": self.state.current,
            "previous": self.state.previous,
            "rollback_available": self.store.exists(self.state.previous),
            "releases": self.store.list_releases(),
            "state": self.activity,
            "last_seq": self.state.last_seq,
            "app_running": await self.supervisor.is_running(),
            "integrity_error": self.integrity_error,
            "interrupted": None
            if rec is None
            else {"seq": rec.seq, "command": rec.command, "deployment_id": rec.deployment_id},
            "trial": trial.facts_view(self.state, self.config.trial_max_starts, time.time()),
            "reverted": self.state.reverted,
            "committed": dict(self.state.committed),
            # Issue 12: health at the same moment, so the controller's pre-flight (one call)
            # also has the device's pre-deploy baseline.
            "health": await self.health(),
        }

    async def health(self) -> dict[str, Any]:
        prober = self.prober
        target = prober.target

        async def app_up_now() -> tuple[bool, float | None]:
            if target is not None and target.health_url is not None:
                return await prober.probe_health()
            return await commands.app_up_without_url(self), None

        # A live scrape, like the live health probe: the metrics describe this moment, and an
        # app that stopped answering reports none rather than its last page.
        (app_up, live), scraped = await asyncio.gather(app_up_now(), prober.scrape_metrics())
        used, total = memory_mb()
        cpu = prober.cpu_percent if prober.cpu_percent is not None else prober.cpu.percent()
        return {
            "device_id": self.config.device_id,
            "app_up": app_up,
            "latency_ms": prober.latency_ms(live),
            "error_rate": prober.error_rate(),
            "cpu_percent": cpu,
            "mem_used_mb": used,
            "mem_total_mb": total,
            "disk_free_mb": disk_free_mb(self.config.data_dir),
            "gpu_percent": gpu_percent(),
            "temperature_c": temperature_c(),
            "restarts": self.supervisor.restarts,
            "crash_loop": self.supervisor.crash_loop,
            "release": self.state.current,
            # Issue 12: the rollback copy, so CONFIRM's health check needs no facts call.
            "rollback_available": self.store.exists(self.state.previous),
            "metrics": reportable(scraped.series) if scraped is not None else {},
            **self._revert_report(),
        }

    def _revert_report(self) -> dict[str, Any]:
        """A standing self-revert rides along with every health answer (the controller may only
        poll health): its reason, from and to; the logs are in the facts."""
        sr = self.state.reverted
        if sr is None or sr.get("to") != self.state.current:
            return {}
        keys = ("reason", "message", "from", "to", "at")
        return {"reverted": {k: sr.get(k) for k in keys}}


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _os_error_reply(exc: OSError, what: str) -> CommandError:
    if exc.errno in DISK_FULL:
        return CommandError(507, "insufficient-disk", f"{what}: disk full ({exc.strerror})")
    return CommandError(500, "internal", f"{what}: {exc.strerror or exc}")


def _validate(command: str, body: Any) -> tuple[int, int, str]:
    if command not in HANDLERS:
        raise CommandError(404, "not-found", f"unknown command {command!r}")
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    seq = body.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise bad_request("seq: expected an integer >= 1")
    seq_base = body.get("seq_base")
    if isinstance(seq_base, bool) or not isinstance(seq_base, int) or seq_base < 0:
        raise bad_request("seq_base: expected an integer >= 0")
    if seq >= MAX_SEQ:
        raise CommandError(409, "seq-out-of-range", f"seq {seq} is not below 2**53")
    problem = window_problem(seq, seq_base)
    if problem is not None:
        raise bad_request(problem)
    dep = body.get("deployment_id")
    if not isinstance(dep, str) or not dep or len(dep) > 200:
        raise bad_request("deployment_id: expected a non-empty string")
    commands.validate_body(command, body)
    return seq, seq_base, dep


def child_env(config: AgentConfig) -> dict[str, str]:
    """The agent's environment minus its secrets and test hooks: the app inherits the rest."""
    drop = {"FLEETGATE_AGENT_PAUSE_AT", "FLEETGATE_AGENT_PAUSE_MARKER"}
    if config.token_env:
        drop.add(config.token_env)
    return {k: v for k, v in os.environ.items() if k not in drop}
