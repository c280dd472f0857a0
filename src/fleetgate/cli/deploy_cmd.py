"""``fleetgate deploy …``: ``plan`` (dry run) here; start/status/approve/… in ``deploy_run``.

``deploy plan`` touches no device: it reads the inventory (the store's, or ``--registry FILE``),
the artifact's manifest and the policy, and prints the spec's PREPARE report, or with ``--json``
one JSON document. Exit 0 when the plan can run, 3 when it is blocked (nothing to target, no
possible canary), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fleetgate.cli.main import EXIT_HALTED, EXIT_OK
from fleetgate.config.manifest_file import load_artifact_manifest
from fleetgate.config.policy_file import load_policy
from fleetgate.core.model import Device
from fleetgate.core.plan import plan_deployment
from fleetgate.report.prepare import plan_to_dict, render_prepare_md


def register(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="plan and run deployments")
    dsub = deploy.add_subparsers(dest="deploy_cmd", metavar="COMMAND", parser_class=type(deploy))
    plan = dsub.add_parser("plan", help="dry run: the PREPARE report; touches no device")
    plan.add_argument("artifact", type=Path, help="bundle (.fgb), app directory or fleetgate.toml")
    plan.add_argument("--policy", type=Path, help="rollout.toml (default: the spec's numbers)")
    plan.add_argument("--select", help="selector, e.g. 'hardware=rpi4,!state=maintenance'")
    plan.add_argument("--registry", type=Path, help="read this inventory file, not the store")
    plan.add_argument("--json", action="store_true", help="one JSON document on stdout")
    plan.set_defaults(handler=cmd_plan)
    from fleetgate.cli.deploy_run import register_run

    register_run(dsub)
    deploy.set_defaults(handler=lambda a: (deploy.print_help(sys.stderr), 2)[1])


async def load_fleet(args: argparse.Namespace) -> list[Device]:
    """The inventory: ``--registry FILE`` if given, else the store's."""
    if getattr(args, "registry", None):
        from fleetgate.registry import load_inventory

        return load_inventory(args.registry)
    from fleetgate.store import Store

    async with Store.open(args.db) as store:
        return await store.list_devices()


async def cmd_plan(args: argparse.Namespace) -> int:
    from fleetgate.registry.selector import parse_selector

    manifest = load_artifact_manifest(args.artifact)
    policy = load_policy(args.policy)
    selector = parse_selector(args.select) if args.select else None
    fleet = await load_fleet(args)
    plan = plan_deployment(fleet, manifest, policy, selector.matches if selector else None)
    bundle_sha = None
    if args.artifact.is_file() and not args.artifact.name.endswith(".toml"):
        from fleetgate.artifacts.container import file_sha256

        bundle_sha = file_sha256(args.artifact)  # the digest `artifact build` printed
    data = plan_to_dict(plan, policy, bundle_sha256=bundle_sha)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_prepare_md(data))
    return EXIT_HALTED if plan.blockers else EXIT_OK
