"""A policy given to the API as a JSON object or as TOML text, validated like a policy file:
every problem named by field, one line (the first) in the error."""

from __future__ import annotations

import sys
from typing import Any

from fleetgate.api.errors import ApiError
from fleetgate.core.policy import Policy
from fleetgate.errors import ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def policy_input(
    policy: dict[str, Any] | None, policy_toml: str | None
) -> tuple[Policy, dict[str, Any]]:
    from fleetgate.config.policy_file import policy_from_dict

    if policy is not None and policy_toml is not None:
        raise ApiError(400, "invalid", "give policy or policy_toml, not both", "policy")
    field = "policy_toml" if policy_toml is not None else "policy"
    if policy_toml is not None:
        try:
            doc = tomllib.loads(policy_toml)
        except tomllib.TOMLDecodeError as exc:
            raise ApiError(400, "invalid", f"policy_toml: {exc}", "policy_toml") from None
    else:
        doc = dict(policy or {})
    try:
        return policy_from_dict(doc, field), doc
    except ValidationError as exc:
        first = exc.problems[0] if exc.problems else str(exc)
        # "policy: canary.percent: ..." -> field "policy.canary.percent"
        parts = first.split(": ")
        named = f"{field}.{parts[1]}" if len(parts) > 2 else field
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        raise ApiError(400, "invalid", first + more, named) from None
