"""The ``cachekeeper`` command: parse, call the library, print. Nothing else happens here."""

from . import database, deploy, diagnosis, housekeeping, quarantine  # noqa: F401  (each registers its commands on app)
from .app import app, main

__all__ = ["app", "main"]
