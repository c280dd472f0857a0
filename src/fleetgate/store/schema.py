"""The store's tables, as SQLAlchemy Core metadata.

This is the *current* shape the code reads and writes; the migrations in ``migrations/versions``
are what create it and are written out by hand (a migration must not change when this file does).
A test checks that a freshly migrated database matches this metadata.

Conventions: timestamps are ISO-8601 UTC text in ``fleetgate.clock``'s fixed-width format (so
text order is time order on every backend); structured values are canonical JSON text, never a
database JSON type, so what is hashed is exactly what is stored.

- ``devices``: the inventory; one row per device, ``data`` is the registry codec's dict.
- ``deployments``: a cached summary per deployment. The events are the truth; this table only
  saves folding the log to answer "what is running". ``wake_at`` (store clock) is when a
  deployment parked between two soak samples is due again: waiting is data, not a task.
- ``events``: the audit log. ``seq`` is assigned densely from 1 by the store; ``prev_hash`` and
  ``hash`` form one global chain (``fleetgate.core.events``).
- ``chain_head``: exactly one row (``id = 1``) holding the last ``seq`` and ``hash``; it changes in
  the same transaction as every append, so cutting events off the end is detectable, and on
  PostgreSQL its row lock is what serialises appenders.
- ``leases``: which controller drives a deployment, until when (store clock), and the epoch of
  its holding: the fencing token every append of a driver is checked against. Rows are kept on
  release so the epoch only ever grows.
- ``device_seq``: the last command sequence number sent to each device.
- ``quarantine``: devices a deployment set aside (reason, deployment), until ``registry
  release``; apart from ``devices`` so an inventory import cannot drop it.
- ``api_users``: who may call the service's API, with which role; only the SHA-256 of each
  bearer token is kept (tokens are 256 random bits, so a plain hash is enough), and a revoked
  user keeps its row (``revoked_at``) so its name stays in the audit history.
- ``enrol_tokens``: one-time enrolment tokens (``fleetgate enroll create``): only the SHA-256 of
  each token, the group it admits to, whether it admits at once (``auto_accept``), its expiry
  (store clock) and, once used, when and by which device; a token is consumed by one atomic
  ``UPDATE … WHERE used_at IS NULL`` so it cannot be used twice, even concurrently.
- ``device_keys``: the Ed25519 public key each self-enrolled device proved it holds; a later
  enrolment under the same id must come from the same key.
- ``devices.last_seen``: when the device last answered (enrolment, facts refresh, a facts call
  during a deployment), store clock; NULL: never.
- ``releases``: bundles uploaded to the service (``POST /api/v1/releases``); the payload itself
  lives content-addressed in the blob directory under ``sha256``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

# SQLite makes an INTEGER PRIMARY KEY the rowid (fast, compact); PostgreSQL wants 64 bits.
SEQ = BigInteger().with_variant(Integer(), "sqlite")
ID = String(128)
TS = String(40)
HASH = String(64)

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("id", ID, primary_key=True),
    Column("data", Text, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("last_seen", TS, nullable=True),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", ID, primary_key=True),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("artifact_label", Text, nullable=False),
    Column("sha256", HASH, nullable=False),
    Column("status", String(32), nullable=False),
    Column("data", Text, nullable=False),
    Column("wake_at", TS, nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=False),
    Column("ts", TS, nullable=False),
    Column("deployment_id", ID, nullable=True),
    Column("device_id", ID, nullable=True),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", HASH, nullable=False),
    Column("hash", HASH, nullable=False),
    Index("ix_events_deployment_seq", "deployment_id", "seq"),
    Index("ix_events_device_seq", "device_id", "seq"),
)

chain_head = Table(
    "chain_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_seq", SEQ, nullable=False),
    Column("last_hash", HASH, nullable=False),
    CheckConstraint("id = 1", name="ck_chain_head_single_row"),
)

leases = Table(
    "leases",
    metadata,
    Column("deployment_id", ID, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("epoch", BigInteger, nullable=False, server_default="0"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("device_id", ID, primary_key=True),
    Column("deployment_id", ID, nullable=True),
    Column("reason", Text, nullable=False),
    Column("since", TS, nullable=False),
)

api_users = Table(
    "api_users",
    metadata,
    Column("name", ID, primary_key=True),
    Column("role", String(16), nullable=False),
    Column("token_hash", HASH, nullable=False, unique=True),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS, nullable=True),
)

releases = Table(
    "releases",
    metadata,
    Column("sha256", HASH, primary_key=True),
    Column("release_id", String(200), nullable=False),
    Column("name", ID, nullable=False),
    Column("version", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("bundle_sha256", HASH, nullable=False),
    Column("uploaded_by", Text, nullable=False),
    Column("uploaded_at", TS, nullable=False),
)

enrol_tokens = Table(
    "enrol_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", HASH, nullable=False, unique=True),
    Column("group_name", ID, nullable=False),
    Column("auto_accept", Integer, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("used_at", TS, nullable=True),
    Column("used_by", ID, nullable=True),
    Column("revoked_at", TS, nullable=True),
)

device_keys = Table(
    "device_keys",
    metadata,
    Column("device_id", ID, primary_key=True),
    Column("public_key", Text, nullable=False),
    Column("enrolled_at", TS, nullable=False),
)

device_seq = Table(
    "device_seq",
    metadata,
    Column("device_id", ID, primary_key=True),
    Column("last_seq", SEQ, nullable=False),
)

CHAIN_HEAD_ID = 1


def upsert(conn: AsyncConnection, table: Table) -> Any:
    """The backend's ``INSERT`` construct, which supports ``ON CONFLICT … DO UPDATE``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
