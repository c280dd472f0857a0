"""The controller's REST API (FastAPI): ``fleetgate serve`` mounts ``create_app``."""
