"""Fleet inventories: load and validate them (fleet.yaml, fleet.csv, Ansible INI/YAML), store
devices as JSON (``codec``), and pick devices with selector expressions (``selector``)."""

from fleetgate.registry.codec import device_from_dict, device_to_dict, devices_to_yaml
from fleetgate.registry.loader import load_inventory
from fleetgate.registry.selector import Selector, parse_selector, select_devices

__all__ = [
    "Selector",
    "device_from_dict",
    "device_to_dict",
    "devices_to_yaml",
    "load_inventory",
    "parse_selector",
    "select_devices",
]
