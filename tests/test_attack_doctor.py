"""Attack: ``doctor --db sqlite:///FILE`` renamed and replaced whatever FILE was, another program's
database included. Doctor now replaces only a file it can prove is a cachekeeper manifest (stamped
with a schema revision of cachekeeper's, or the manifest of a marked root) or that does not
exist; anything else is refused in one line, exit 2, and left as it is.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from .adversary import invoke, snapshot


def _files(directory: Path) -> dict[str, str]:
    return snapshot(directory)


@pytest.mark.parametrize(
    "content",
    ["another program's sqlite", "garbage", "empty", "a link to a manifest elsewhere"],
)
def test_doctor_never_replaces_what_it_cannot_prove_is_a_manifest(root, tmp_path, content):
    other = tmp_path / "other"
    other.mkdir()
    victim = other / "app.db"
    if content == "another program's sqlite":
        with sqlite3.connect(victim) as connection:
            connection.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
            connection.execute("INSERT INTO invoices VALUES (1, 99.5)")
    elif content == "garbage":
        victim.write_bytes(b"\x00\x01not a database at all" * 100)
    elif content == "empty":
        victim.write_bytes(b"")
    else:
        assert invoke("--root", str(root), "sync").code == 0
        victim.symlink_to(root / ".cachekeeper" / "manifest.db")
    before = _files(other)
    outcome = invoke("--root", str(root), "--db", f"sqlite:///{victim}", "doctor")
    outcome.assert_usage_error()
    assert "not a cachekeeper manifest" in outcome.err
    assert _files(other) == before


def test_doctor_still_moves_aside_a_damaged_manifest_of_a_marked_root(root):
    assert invoke("--root", str(root), "sync").code == 0
    database = root / ".cachekeeper" / "manifest.db"
    database.write_bytes(b"garbage" * 1000)
    outcome = invoke("--root", str(root), "doctor", "--json")
    assert outcome.code == 0, outcome.err
    assert '"manifest":"replaced"' in outcome.out.replace(" ", "")
    assert any(p.name.startswith("manifest.db.damaged-") for p in database.parent.iterdir())


def test_doctor_accepts_a_cachekeeper_manifest_elsewhere(root, tmp_path):
    elsewhere = tmp_path / "fleet.db"
    assert invoke("--root", str(root), "--db", f"sqlite:///{elsewhere}", "sync").code == 0
    outcome = invoke("--root", str(root), "--db", f"sqlite:///{elsewhere}", "doctor")
    assert outcome.code == 0, outcome.err
