"""fleetgate: staged, health-gated, self-rolling-back software rollouts to edge device fleets."""

__version__ = "0.1.0"
