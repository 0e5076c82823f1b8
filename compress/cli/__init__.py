"""The ``compress`` command: the root group (:mod:`compress.cli.root`) and the command modules that register on it."""

from compress.cli import bench, cache, devices, drift, package, search, shadow  # noqa: F401  (each registers its commands on the app)
from compress.cli.root import app, devices_app, main

__all__ = ["app", "devices_app", "main"]
