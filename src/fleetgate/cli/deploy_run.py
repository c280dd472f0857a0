"""``fleetgate deploy start|status|approve|reject|resume|rollback|report``.

Exit codes (DESIGN.md): 0 COMPLETE, 1 PARTIAL, 3 halted/rolled back/aborted, 4 waiting for
approval or for a human decision after a 5-20 % wave pause (HALTED with failed devices pending
quarantine), 2 bad input (a missing, truncated or wrongly signed bundle too), 3 for a refusal by a
guardrail, 5 internal error.

The release's public key (``--pubkey``, ``FLEETGATE_PUBKEY`` or ``.fleetgate/keys/``) — or a
``root.json`` naming the release keys and threshold, whose chain ``start`` then publishes beside
the blobs for devices to walk — is needed only to verify a release: by ``start``, and by a
decision whose drive still has PREPARE to run. Approving, rejecting, resuming or rolling back a
deployment past PREPARE works without it. A human's name (``--as``) is stripped; a blank one is
refused.

``start`` runs until the deployment needs a human; with ``--follow`` it then waits, showing the
state, for the decision to be recorded (``deploy approve`` from another terminal) and drives on
until the end. ``approve``/``resume``/``rollback`` record the human decision and drive the
deployment on from there, with one read of the log; ``--no-drive`` only records it. ``resume``
of a deployment that is not HALTED records nothing: it is crash recovery, driving on from the
log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fleetgate.cli.main import EXIT_OK, person
from fleetgate.core.state import DeploymentState, Phase, exit_code, render_state_block
from fleetgate.errors import FleetgateError, InputError, IntegrityError

HOME = Path(os.environ.get("FLEETGATE_HOME", ".fleetgate"))


def register_run(dsub: Any) -> None:
    start = dsub.add_parser("start", help="start a deployment (runs until it needs a human)")
    start.add_argument("artifact", type=Path, help="a signed bundle (.fgb)")
    start.add_argument("--policy", type=Path, help="rollout.toml (default: the spec's numbers)")
    start.add_argument("--select", help="selector, e.g. 'group=plant-a'")
    start.add_argument("--follow", action="store_true", help="wait for approval and finish")
    start.add_argument(
        "--as",
        dest="actor",
        default=None,
        help="who starts it (audit log; names the person behind allow_short_soak); default $USER",
    )
    start.add_argument(
        "--downgrade-authorization",
        type=Path,
        metavar="FILE",
        help="a signed downgrade authorisation (fleetgate artifact authorize-downgrade): "
        "devices that committed a higher version may stage this one",
    )
    _common(start)
    start.set_defaults(handler=cmd_start)

    status = dsub.add_parser("status", help="phase, counts and the state block")
    status.add_argument("id", nargs="?", help="deployment id (default: the latest)")
    status.add_argument("--json", action="store_true")
    server_arg(status)
    status.set_defaults(handler=cmd_status)

    watch = dsub.add_parser("watch", help="follow a deployment's events live until it waits")
    watch.add_argument("id", nargs="?", help="deployment id (default: the latest)")
    watch.add_argument("--json", action="store_true", help="one JSON event per line")
    watch.add_argument(
        "--until-end", action="store_true", help="keep watching through approvals and halts"
    )
    server_arg(watch)
    watch.set_defaults(handler=cmd_watch)

    for name, action, helptext in (
        ("approve", "approval.granted", "record a human approval for the fleet rollout"),
        ("reject", "approval.rejected", "reject the fleet rollout (canaries are rolled back)"),
        ("resume", "deployment.resumed", "continue after a halt or pause (a human decision)"),
        ("halt", "deployment.halted", "pause a moving deployment at its next safe point"),
    ):
        p = dsub.add_parser(name, help=helptext)
        p.add_argument("id")
        p.add_argument(
            "--as",
            dest="actor",
            required=name not in ("resume", "halt"),
            default=None,
            help="the human taking the decision",
        )
        p.add_argument("--comment", default="")
        p.add_argument("--no-drive", action="store_true", help="only record the decision")
        if name == "approve":
            p.add_argument(
                "--accept-inconclusive",
                action="store_true",
                help="approve although the canary analysis was INCONCLUSIVE (recorded with "
                "your name)",
            )
        if name == "resume":
            p.add_argument(
                "--exclude-failed-cells",
                action="store_true",
                help="after a partial canary FAIL: leave the failed canaries' hardware types and "
                "groups out of this deployment instead of proving them with replacement canaries",
            )
        _common(p)
        p.set_defaults(handler=cmd_decide, action=action)

    rb = dsub.add_parser("rollback", help="roll back the whole deployment or single devices")
    rb.add_argument("id")
    rb.add_argument("--device", action="append", default=[], help="only this device (repeat)")
    rb.add_argument("--as", dest="actor", default=None)
    rb.add_argument("--comment", default="")
    rb.add_argument("--no-drive", action="store_true")
    _common(rb)
    rb.set_defaults(handler=cmd_decide, action="rollback.requested")

    rec = dsub.add_parser(
        "recover",
        help="clear a rollback failure once the device is fixed (re-checked first)",
    )
    rec.add_argument("id")
    rec.add_argument("--device", required=True, help="the device whose rollback failed")
    rec.add_argument("--as", dest="actor", required=True, help="the human who fixed it")
    rec.add_argument("--comment", default="", help="what was done to the device")
    _common(rec)
    rec.set_defaults(handler=cmd_recover)

    report = dsub.add_parser("report", help="the session report, from the event log alone")
    report.add_argument("id", nargs="?")
    report.add_argument("--format", choices=("md", "json"), default="md")
    report.add_argument("--json", action="store_true", help="the same as --format json")
    server_arg(report)
    report.set_defaults(handler=cmd_report)


def server_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("FLEETGATE_SERVER") or None,
        help="a running `fleetgate serve` (env FLEETGATE_SERVER; token from FLEETGATE_TOKEN); "
        "default: the local store",
    )


def _common(p: argparse.ArgumentParser) -> None:
    server_arg(p)
    p.add_argument(
        "--pubkey",
        type=Path,
        default=None,
        help="release signing public key, or a root.json (env FLEETGATE_PUBKEY; default "
        ".fleetgate/keys/fleetgate-signing.pub)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--concurrency", type=int, default=200, help="devices driven in parallel")


def _pubkey(args: argparse.Namespace, *, required: bool) -> Path | None:
    """The public key named by ``--pubkey`` or ``FLEETGATE_PUBKEY`` (which must exist), else
    the default one if it exists; without one, None unless ``required``."""
    named = args.pubkey or os.environ.get("FLEETGATE_PUBKEY")
    path = Path(named) if named else HOME / "keys" / "fleetgate-signing.pub"
    if path.exists():
        return path
    if named or required:
        raise InputError(f"{path}: no public key (give --pubkey or set FLEETGATE_PUBKEY)")
    return None


@contextlib.asynccontextmanager
async def controller(args: argparse.Namespace, *, need_pubkey: bool = False) -> AsyncIterator[Any]:
    from fleetgate.cli.progress import Progress
    from fleetgate.engine.service import Controller, ControllerConfig
    from fleetgate.store import Store
    from fleetgate.transports.http import HttpTransport, controller_tls_from_env
    from fleetgate.transports.tokens import TokenSource

    progress = Progress(enabled=not getattr(args, "json", False))
    config = ControllerConfig(
        HOME / "blobs",
        _pubkey(args, required=need_pubkey),
        concurrency=getattr(args, "concurrency", 200),
    )
    async with (
        Store.open(args.db) as store,
        HttpTransport(
            TokenSource(), concurrency=config.concurrency, tls=controller_tls_from_env()
        ) as transport,
    ):
        from fleetgate.engine.facts_refresh import FactsRecorder

        recorder = FactsRecorder(store).attach(transport)
        ctl = Controller(store, transport, config, on_progress=progress.update)
        try:
            with progress:
                yield ctl
        finally:
            await recorder.aclose()


async def _latest(store: Any) -> str:
    deps = await store.list_deployments()
    if not deps:
        raise InputError("no deployment yet: fleetgate deploy start ARTIFACT")
    return str(deps[-1].id)


def _emit(
    args: argparse.Namespace, state: DeploymentState, extra: dict[str, Any] | None = None
) -> int:
    if getattr(args, "json", False):
        doc = {
            "deployment_id": state.deployment_id,
            "phase": state.phase.value,
            "exit_code": exit_code(state),
            "state": _state_fields(state),
            **(extra or {}),
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"deployment {state.deployment_id}: {state.phase.value}")
        if state.halt_reason and state.phase is Phase.HALTED:
            print(f"reason: {state.halt_reason}")
        print(render_state_block(state))
    return exit_code(state)


def _state_fields(state: DeploymentState) -> dict[str, str]:
    lines = render_state_block(state).splitlines()[1:-1]
    return dict(line.split(": ", 1) for line in lines)


async def _follow(ctl: Any, dep: str, state: DeploymentState) -> DeploymentState:
    """Wait for a human decision recorded elsewhere, then drive on; until the end."""
    while not state.phase.terminal:
        if state.phase in (Phase.AWAITING_APPROVAL, Phase.HALTED):
            print(f"waiting: {render_state_block(state).splitlines()[-3]}", file=sys.stderr)
            await ctl.wait_for_news(dep)
        state = await ctl.drive(dep)
    return state


async def cmd_start(args: argparse.Namespace) -> int:
    if args.server:
        from fleetgate.cli import remote

        if args.downgrade_authorization is not None:
            # Never dropped silently: the service's API does not carry one yet.
            raise InputError(
                "--downgrade-authorization: not supported with --server yet; start this "
                "deployment with a local controller (without --server)"
            )

        return await remote.start(args)
    from fleetgate.config.policy_file import load_policy_doc
    from fleetgate.registry.selector import parse_selector

    policy, doc = load_policy_doc(args.policy)
    selector = parse_selector(args.select) if args.select else None
    async with controller(args, need_pubkey=True) as ctl:
        try:
            dep = await ctl.start(
                args.artifact,
                policy,
                policy_doc=doc,
                select=selector.matches if selector else None,
                actor=person(args.actor)
                if args.actor is not None
                else (os.environ.get("USER") or "").strip() or "operator",
                downgrade_authorization=args.downgrade_authorization,
            )
        except IntegrityError as exc:
            # The bundle the operator named is missing, truncated, altered or signed by
            # another key: their input to fix (exit 2), not an internal error.
            reason = str(exc)
            prefix = f"{args.artifact}: "
            raise InputError(reason if reason.startswith(prefix) else prefix + reason) from exc
        print(f"started {dep}", file=sys.stderr)
        state = await ctl.drive(dep)
        if args.follow:
            state = await _follow(ctl, dep, state)
        return _emit(args, state)


async def _load(args: argparse.Namespace) -> tuple[str, list[Any]]:
    """The deployment named (or the latest) and its events."""
    from fleetgate.store import Store

    async with Store.open(args.db) as store:
        dep = args.id or await _latest(store)
        events = await store.events(dep)
    if not events:
        raise InputError(f"no deployment {dep!r}")
    return dep, events


async def cmd_status(args: argparse.Namespace) -> int:
    if args.server:
        from fleetgate.cli import remote

        return await remote.status(args)
    from fleetgate.core.machine import fold

    dep, events = await _load(args)
    return _emit(args, fold(dep, events))


async def cmd_decide(args: argparse.Namespace) -> int:
    if args.server:
        from fleetgate.cli import remote

        return await remote.decide(args)
    from fleetgate.engine.service import Decision

    # Without --as (resume, rollback): $USER; the engine refuses an empty name where it records.
    user = (os.environ.get("USER") or "").strip()
    actor = person(args.actor) if args.actor is not None else user
    details: dict[str, Any] = {"comment": args.comment}
    if args.action == "rollback.requested":
        details.update(devices=args.device, reason=args.comment or "operator rollback")
    if getattr(args, "exclude_failed_cells", False):
        details["canary_failure"] = "exclude"
    if getattr(args, "accept_inconclusive", False):
        details["accept_inconclusive"] = True
    async with controller(args) as ctl:
        state = await ctl.record_decision(args.id, Decision(args.action, actor, None, details))
        if not args.no_drive and args.action != "deployment.halted":
            try:
                state = await ctl.drive(args.id)
            except FleetgateError as exc:
                if not exc.retryable:
                    raise
                # Recorded; another controller drives it and carries the decision out.
                print(f"recorded; {exc}", file=sys.stderr)
        return _emit(args, state)


async def cmd_watch(args: argparse.Namespace) -> int:
    from fleetgate.cli.watch import watch

    return await watch(args)


async def cmd_recover(args: argparse.Namespace) -> int:
    """Re-check the device (reachable, known-good release, healthy); only then record it."""
    if args.server:
        from fleetgate.cli import remote

        return await remote.recover(args)
    actor = person(args.actor)
    async with controller(args) as ctl:
        state = await ctl.recover(args.id, args.device, actor, args.comment)
        if not getattr(args, "json", False):
            print(f"{args.device}: recovered (recorded by {actor})", file=sys.stderr)
        return _emit(args, state)


async def cmd_report(args: argparse.Namespace) -> int:
    if args.server:
        from fleetgate.cli import remote

        return await remote.report(args)
    from fleetgate.report.session import build_report, render_report_md

    dep, events = await _load(args)
    report = build_report(dep, events)
    if args.format == "json" or args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_report_md(report))
    return EXIT_OK
