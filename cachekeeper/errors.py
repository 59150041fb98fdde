"""Every error cachekeeper raises on purpose, with a message written for the person who must act.

The CLI turns these into one line on stderr and an exit code; nothing here prints.
"""

from __future__ import annotations

# Exit codes shared by every command. CHECK_NOT_READY doubles as "something is wrong" for verify.
OK = 0
NOT_READY = 1
USAGE = 2
UNEXPECTED = 3
INTERRUPTED = 130


class CachekeeperError(Exception):
    """Root of the hierarchy: a failure that cachekeeper understands and can explain."""

    exit_code = NOT_READY


class UsageError(CachekeeperError):
    """Bad input from the user: an argument, a target file, an environment variable."""

    exit_code = USAGE


class TargetError(UsageError):
    """A target file (cachekeeper.toml or [tool.cachekeeper]) that cannot be used as written."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class FingerprintError(CachekeeperError):
    """A fact that a key needs could not be determined, so no key can honestly be given."""


class RevisionError(UsageError):
    """A model revision that cannot be turned into a commit sha."""


class UnknownKeyError(UsageError):
    """A key string that is malformed or that nothing has recorded."""


class ManifestError(CachekeeperError):
    """The manifest database cannot be opened or used."""


class ManifestUnreachable(ManifestError):
    """The database URL is wrong or its server does not answer."""

    exit_code = USAGE


class SchemaOutOfDate(ManifestError):
    """The manifest was made by an older cachekeeper and must be upgraded first."""


class SchemaTooNew(ManifestError):
    """The manifest was made by a newer cachekeeper than this one."""


class StoreError(CachekeeperError):
    """The cache root cannot be read or written as needed."""


class QuarantineRefused(StoreError):
    """A quarantined artifact that cannot be moved back as asked (a newer one took its key), and why."""


class LeasesUnavailable(CachekeeperError):
    """The lease mechanism builders must use cannot be reached or trusted: no key is built."""


class UnsafePath(StoreError):
    """A name recorded in a sidecar, a row or a file name that would lead outside its place."""


class UnsafeRoot(UsageError):
    """A directory cachekeeper must not treat as a cache root: ``/``, a home directory, or one it
    did not make."""


class SnapshotMismatch(CachekeeperError):
    """A process restored from a memory snapshot does not match the facts the snapshot was keyed by."""
