"""``fleetgate serve``: the long-running controller (API + worker + distribution point)."""
