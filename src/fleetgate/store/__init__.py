"""fleetgate's durable store: inventory, deployments, the hash-chained audit log, leases.

Controller-side only (imports SQLAlchemy). See ``store.py`` for the API and ``docs/store.md``
for the schema and the guarantees.
"""

from fleetgate.store.engine import StoreTarget, parse_store_url
from fleetgate.store.leases import Fence, Lease
from fleetgate.store.store import DeploymentRecord, Store, StoreOpener

__all__ = [
    "DeploymentRecord",
    "Fence",
    "Lease",
    "Store",
    "StoreOpener",
    "StoreTarget",
    "parse_store_url",
]
