"""The manifest's database URL: which backend, which file, and how to show it without its password.

``sqlite:///PATH`` is the embedded default (a file under the cache root); ``postgresql://`` (read
as ``postgresql+psycopg://``) is the fleet backend. SQLite URLs are read without SQLAlchemy, so
that a command that only reads starts without loading it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ManifestUnreachable
from ..store import Roots
from ..values import Value

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

_SECRET_PARAMETER = re.compile(r"pass|secret|token|key|auth|credential", re.IGNORECASE)
FORMS = "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
_IN_MEMORY = ("", ":memory:")


class DatabaseUrl(Value):
    """A parsed manifest URL. ``sqlite_database`` is the SQLite file ("" or ":memory:" in memory),
    None for a database server. ``str()`` hides the password: use it in every message."""

    text: str
    sqlite_database: str | None

    @classmethod
    def parse(cls, text: str) -> DatabaseUrl:
        """Raises ManifestUnreachable, without the password, when ``text`` cannot name a manifest."""
        scheme, separator, rest = text.partition("://")
        if separator and scheme.split("+")[0] == "sqlite":
            database = rest[1:].split("?", 1)[0] if rest.startswith("/") else ":memory:"
            if "\0" in database:
                raise ManifestUnreachable(f"invalid database URL {text!r}: a path cannot hold a NUL")
            return cls(text, database)
        parsed = _parse_server(text)
        if parsed.drivername in ("postgresql", "postgres"):
            # The URL a provider hands out names no driver; the postgres extra installs psycopg.
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_backend_name() != "postgresql":
            raise ManifestUnreachable(f"unsupported database URL {hidden(parsed)}: {FORMS}")
        return cls(parsed.render_as_string(hide_password=False), None)

    @classmethod
    def for_file(cls, path: Path) -> DatabaseUrl:
        return cls(f"sqlite:///{path}", str(path))

    @property
    def is_server(self) -> bool:
        """A database server that many containers may write at once (not a SQLite file)."""
        return self.sqlite_database is None

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file, None in memory or on a server."""
        if self.sqlite_database is None or self.sqlite_database in _IN_MEMORY:
            return None
        return Path(self.sqlite_database)

    def __str__(self) -> str:
        return self.text if self.sqlite_database is not None else hidden(_parse_server(self.text))


def hidden(url: URL) -> str:
    """``url`` for messages: SQLAlchemy hides the password; a parameter that holds one
    (``?password=``, ``sslpassword``, a token) is hidden the same way."""
    query = {name: "***" if _SECRET_PARAMETER.search(name) else value for name, value in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True)


def _parse_server(text: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(text)
    except (ArgumentError, ValueError):
        # Unparsed, nothing tells the password from the rest: show only what names the backend.
        scheme, separator, _ = text.partition("://")
        shown = f"{scheme}://…" if separator else "(not a URL)"
        raise ManifestUnreachable(f"invalid database URL {shown}: {FORMS}") from None


def default_url(roots: Roots) -> str:
    """The embedded default: a SQLite file in the main root's state directory."""
    return DatabaseUrl.for_file(roots.main.manifest_path).text
