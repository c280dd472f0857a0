"""Ansible inventories (INI and YAML) as fleet inventories.

Both forms are read into the same tree (groups with direct hosts, vars and children; per-host
vars), then every host becomes one ``RawEntry``:

- Variables merge as Ansible does: ``all`` vars, then group vars from the least to the most
  specific group (depth, then name), then the host's own vars.
- ``fleetgate_<field>`` variables map to device fields (``fleetgate_id`` defaults to the
  inventory hostname; ``fleetgate_software_<name>`` to software entries). Any other
  ``fleetgate_*`` variable is an error (typo protection); other Ansible variables are ignored.
- ``arch``: ``fleetgate_arch``, else ``ansible_architecture`` mapped (aarch64→arm64,
  armv7l→armv7, x86_64). ``address``: ``fleetgate_address``, else
  ``http://{ansible_host or hostname}:7601``.
- ``group``: ``fleetgate_group``, else the most specific group that lists the host directly
  (a group that is an ancestor of another listing group does not count). A host listed by two
  unrelated groups without ``fleetgate_group`` is an error naming both.

A host is located as ``line N`` (INI: where it is first listed) or ``host 'NAME'`` (YAML).
Host ranges (``orin-[01:04]``, ``gw-[a:c]``) are expanded as Ansible does.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetgate.registry.fields import (
    FIELDS,
    INLINE_TOKEN_KEYS,
    RawEntry,
    describe,
    inline_token_message,
    unknown_key_message,
)

PREFIX = "fleetgate_"
SOFTWARE_PREFIX = "fleetgate_software_"
DEFAULT_AGENT_PORT = 7601
ANSIBLE_ARCH = {"aarch64": "arm64", "arm64": "arm64", "armv7l": "armv7", "x86_64": "x86_64"}
_SECTION_RE = re.compile(r"^\[([^\]\s:]+)(?::(vars|children))?\]$")
_RANGE_RE = re.compile(r"\[([0-9]+|[a-zA-Z]):([0-9]+|[a-zA-Z])(?::([0-9]+))?\]")
_IMPLICIT = ("all", "ungrouped")


@dataclass
class _Group:
    hosts: list[str] = field(default_factory=list)
    vars: dict[str, object] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass
class AnsibleTree:
    """An inventory as groups and hosts, plus problems found while reading it."""

    source: str
    groups: dict[str, _Group] = field(default_factory=dict)
    host_vars: dict[str, dict[str, object]] = field(default_factory=dict)
    host_where: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def group(self, name: str) -> _Group:
        return self.groups.setdefault(name, _Group())

    def add_host(self, group: str, host: str, host_vars: Mapping[str, object], where: str) -> None:
        members = self.group(group).hosts
        if host not in members:
            members.append(host)
        self.host_vars.setdefault(host, {}).update(host_vars)
        self.host_where.setdefault(host, where)


def expand_hosts(pattern: str) -> list[str]:
    """``orin-[01:03]`` -> orin-01, orin-02, orin-03 (zero padding kept); raises ValueError."""
    m = _RANGE_RE.search(pattern)
    if m is None:
        if "[" in pattern or "]" in pattern:
            raise ValueError(f"host pattern {pattern!r} has a malformed [start:end] range")
        return [pattern]
    start, end, step_s = m.group(1), m.group(2), m.group(3)
    step = int(step_s) if step_s else 1
    if start.isdigit() != end.isdigit() or step < 1:
        raise ValueError(f"host pattern {pattern!r} has a malformed [start:end] range")
    if start.isdigit():
        width = len(start) if start.startswith("0") else 0
        values = [str(i).zfill(width) for i in range(int(start), int(end) + 1, step)]
    else:
        values = [chr(i) for i in range(ord(start), ord(end) + 1, step)]
    if not values:
        raise ValueError(f"host pattern {pattern!r}: range start is after its end")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [host for v in values for host in expand_hosts(f"{head}{v}{tail}")]


def read_ansible_ini(text: str, source: str) -> AnsibleTree:
    """Parse the INI form: ``[group]`` host lines, ``[group:vars]``, ``[group:children]``."""
    tree = AnsibleTree(source)
    group, kind = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{source}: line {lineno}"
        if line.startswith("["):
            m = _SECTION_RE.match(line)
            if m is None:
                tree.problems.append(f"{where}: malformed section header {line!r}")
                group, kind = "", "skip"
                continue
            group, kind = m.group(1), m.group(2) or "hosts"
            tree.group(group)
            continue
        if kind == "skip":
            continue
        if kind == "vars":
            key, eq, value = line.partition("=")
            if not eq or not key.strip():
                tree.problems.append(f"{where}: expected key=value in [{group}:vars]")
                continue
            tree.group(group).vars[key.strip()] = _unquote(value.strip())
        elif kind == "children":
            child = line.split()[0]
            if child == group:
                tree.problems.append(f"{where}: group {group!r} cannot be its own child")
                continue
            tree.group(child)
            if child not in tree.group(group).children:
                tree.group(group).children.append(child)
        else:
            _read_host_line(tree, group, line, where, f"line {lineno}")
    return tree


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _read_host_line(tree: AnsibleTree, group: str, line: str, where: str, short: str) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        tree.problems.append(f"{where}: cannot split host line: {exc}")
        return
    if not tokens:
        return
    host_vars: dict[str, object] = {}
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if not eq or not key:
            tree.problems.append(f"{where}: host variable {token!r} is not key=value")
            continue
        host_vars[key] = value
    try:
        hosts = expand_hosts(tokens[0])
    except ValueError as exc:
        tree.problems.append(f"{where}: {exc}")
        return
    for host in hosts:
        tree.add_host(group, host, host_vars, short)


def read_ansible_yaml(doc: Mapping[object, object], source: str) -> AnsibleTree:
    """Walk the YAML form: ``all: {hosts: …, vars: …, children: {group: {…}}}``."""
    tree = AnsibleTree(source)
    for name, node in doc.items():
        _walk(tree, str(name), node, str(name))
    return tree


def _walk(tree: AnsibleTree, group: str, node: object, path: str) -> None:
    tree.group(group)
    if node is None:
        return
    if not isinstance(node, Mapping):
        tree.problems.append(f"{tree.source}: {path}: expected a mapping, got {describe(node)}")
        return
    for key, value in node.items():
        at = f"{path}.{key}"
        if key not in ("hosts", "vars", "children"):
            msg = unknown_key_message(str(key), ["hosts", "vars", "children"])
            tree.problems.append(f"{tree.source}: {at}: {msg}")
        elif value is None:
            continue
        elif not isinstance(value, Mapping):
            tree.problems.append(f"{tree.source}: {at}: expected a mapping, got {describe(value)}")
        elif key == "vars":
            tree.group(group).vars.update({str(k): v for k, v in value.items()})
        elif key == "children":
            for child, child_node in value.items():
                if str(child) == group:
                    tree.problems.append(f"{tree.source}: {at}: group {group!r} is its own child")
                    continue
                if str(child) not in tree.group(group).children:
                    tree.group(group).children.append(str(child))
                _walk(tree, str(child), child_node, f"{at}.{child}")
        else:
            _read_yaml_hosts(tree, group, value, at)


def _read_yaml_hosts(
    tree: AnsibleTree, group: str, hosts: Mapping[object, object], at: str
) -> None:
    for pattern, host_vars in hosts.items():
        if host_vars is not None and not isinstance(host_vars, Mapping):
            got = describe(host_vars)
            tree.problems.append(f"{tree.source}: {at}.{pattern}: expected host vars, got {got}")
            continue
        try:
            names = expand_hosts(str(pattern))
        except ValueError as exc:
            tree.problems.append(f"{tree.source}: {at}: {exc}")
            continue
        for host in names:
            values = {str(k): v for k, v in (host_vars or {}).items()}
            tree.add_host(group, host, values, f"host {host!r}")


def _parents(tree: AnsibleTree) -> dict[str, set[str]]:
    parents: dict[str, set[str]] = {name: set() for name in tree.groups}
    for name, group in tree.groups.items():
        for child in group.children:
            parents.setdefault(child, set()).add(name)
    return parents


def _ancestors(name: str, parents: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(parents.get(name, ()))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(parents.get(current, ()))
    return seen


def tree_to_entries(tree: AnsibleTree) -> tuple[list[RawEntry], list[str]]:
    """Resolve vars and groups for every host. Cycles in ``children`` are reported."""
    parents = _parents(tree)
    ancestors = {name: _ancestors(name, parents) for name in tree.groups}
    problems = list(tree.problems)
    problems.extend(
        f"{tree.source}: group {name!r}: its children lead back to itself"
        for name, anc in ancestors.items()
        if name in anc
    )
    listing: dict[str, list[str]] = {}
    for name, group in tree.groups.items():
        for host in group.hosts:
            listing.setdefault(host, []).append(name)
    entries = [_host_entry(tree, host, listing[host], ancestors) for host in tree.host_vars]
    return entries, problems


def _host_entry(
    tree: AnsibleTree, host: str, direct: list[str], ancestors: Mapping[str, set[str]]
) -> RawEntry:
    related = set(direct).union(*(ancestors.get(g, set()) for g in direct)) - {"all"}
    ordered = sorted(related, key=lambda g: (len(ancestors.get(g, ())), g))
    merged: dict[str, object] = dict(tree.groups["all"].vars) if "all" in tree.groups else {}
    for name in ordered:
        merged.update(tree.groups[name].vars)
    merged.update(tree.host_vars[host])

    entry = RawEntry(
        where=tree.host_where[host],
        labels={f: PREFIX + f for f in FIELDS},
        software_prefix=SOFTWARE_PREFIX,
    )
    entry.values["id"] = host
    for key, value in merged.items():
        _map_var(entry, key, value)
    if "arch" not in entry.values and merged.get("ansible_architecture") is not None:
        raw = merged["ansible_architecture"]
        entry.values["arch"] = ANSIBLE_ARCH.get(str(raw), raw)
        entry.labels["arch"] = "ansible_architecture"
    if "address" not in entry.values:
        target = merged.get("ansible_host") or host
        target = f"[{target}]" if ":" in str(target) else target
        entry.values["address"] = f"http://{target}:{DEFAULT_AGENT_PORT}"
    if "group" not in entry.values:
        _pick_group(entry, direct, ancestors)
    return entry


def _map_var(entry: RawEntry, key: str, value: object) -> None:
    if not key.startswith(PREFIX):
        return
    if key.startswith(SOFTWARE_PREFIX) and len(key) > len(SOFTWARE_PREFIX):
        entry.software[key[len(SOFTWARE_PREFIX) :]] = value
        return
    name = key[len(PREFIX) :]
    if name in FIELDS:
        entry.values[name] = value
    elif name in INLINE_TOKEN_KEYS:
        message = inline_token_message(PREFIX + "token_env", PREFIX + "token_file")
        entry.refuse_inline_credential(key, message)
    else:
        allowed = [PREFIX + f for f in FIELDS] + [SOFTWARE_PREFIX + "NAME"]
        entry.problems.append((key, unknown_key_message(key, allowed, "variable")))


def _pick_group(entry: RawEntry, direct: list[str], ancestors: Mapping[str, set[str]]) -> None:
    candidates = [g for g in direct if g not in _IMPLICIT]
    specific = [g for g in candidates if not any(g in ancestors[o] for o in candidates)]
    if len(specific) == 1:
        entry.values["group"] = specific[0]
    elif not specific:
        entry.problems.append(
            ("fleetgate_group", "missing: list the host under a group or set fleetgate_group")
        )
    else:
        names = " and ".join(repr(g) for g in sorted(specific))
        entry.problems.append(
            ("fleetgate_group", f"host is in groups {names}; set fleetgate_group to choose one")
        )
