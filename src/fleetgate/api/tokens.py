"""API users' bearer tokens and what each role may do.

Tokens are 256 random bits (``fgt_`` + URL-safe base64); the store keeps only their SHA-256.
A slow password hash buys nothing for secrets with this much entropy, and a constant-time
lookup by hash leaks nothing about other tokens.

Least privilege: viewers read; operators start, halt, resume, roll back and recover, upload
releases and import inventories; approvers read and approve or reject — and nothing else, so
the person who approves need not be able to start; admins may do everything.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import Enum

TOKEN_PREFIX = "fgt_"  # noqa: S105 - a marker, not a secret


class Role(str, Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"


class Permission(str, Enum):
    READ = "read"
    OPERATE = "operate"
    APPROVE = "approve"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    Role.APPROVER: frozenset({Permission.READ, Permission.APPROVE}),
    Role.ADMIN: frozenset(Permission),
}


def allowed(role: str, permission: Permission) -> bool:
    try:
        return permission in GRANTS[Role(role)]
    except ValueError:
        return False  # a role this version does not know grants nothing


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
