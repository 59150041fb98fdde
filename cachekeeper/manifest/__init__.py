"""The manifest: the SQL index of artifacts, fingerprints, pins, leases and events (SQLite or PostgreSQL).

The manifest is an index, not the truth: sidecars say what exists, and ``doctor`` can rebuild the
manifest from them and from the journals.
"""

from .database import Manifest
from .migration import migrations_dir
from .queries import ArtifactSummary, Event, Observation, environment_facts
from .url import DatabaseUrl, default_url

__all__ = [
    "ArtifactSummary",
    "DatabaseUrl",
    "Event",
    "FoldResult",
    "Manifest",
    "Observation",
    "default_url",
    "environment_facts",
    "migrations_dir",
]
