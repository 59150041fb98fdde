"""The manifest: the SQL index of artifacts, fingerprints, pins, leases and events (SQLite or PostgreSQL).

The manifest is an index, not the truth: sidecars say what exists, and ``doctor`` can rebuild the
manifest from them and from the journals.
"""

from .database import Manifest
from .migration import migrations_dir
from .queries import ArtifactSummary, Event, EventCount, Observation, Stored, environment_facts, utc_day
from .url import DatabaseUrl, default_url

__all__ = [
    "ArtifactSummary",
    "DatabaseUrl",
    "Event",
    "EventCount",
    "FoldResult",
    "Manifest",
    "Observation",
    "Stored",
    "default_url",
    "environment_facts",
    "migrations_dir",
    "utc_day",
]
