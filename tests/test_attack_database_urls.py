"""Attack: hand-made password redaction. A password with a ``/``, ``@`` or ``:`` in it, or given
as a ``?password=`` parameter, reached error messages. URLs are now parsed once
(``manifest.url.DatabaseUrl``) and shown only through SQLAlchemy's password-hiding rendering; a
URL too broken to parse is shown by its scheme alone.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachekeeper.errors import CachekeeperError
from cachekeeper.manifest import DatabaseUrl, Manifest

from .adversary import examples, invoke

PASSWORDS = ["p/ss", "p@ss", "p:ss", "p?ss", "p#ss", "p%20ss", "p ss", "p&ss=1", "päss", "x" * 80]


def _urls(password: str) -> list[str]:
    encoded = quote(password, safe="")
    # Unencoded, a password can only be told from the host when it holds none of URL's delimiters.
    raw = [] if set(password) & set("@/:?#%[] ") else [f"postgresql://user:{password}@127.0.0.1:1/db"]
    return [
        *raw,
        f"postgresql://user:{encoded}@127.0.0.1:1/db",
        f"postgresql+psycopg://user:{encoded}@127.0.0.1:1/db?sslmode=disable",
        f"postgresql://user@127.0.0.1:1/db?password={encoded}",
        f"postgresql://user:{encoded}@127.0.0.1:54x2/db",  # a malformed port: unparsable
        f"mysql://user:{encoded}@127.0.0.1/db",  # an unsupported scheme
        f"postgresql+nodriver://user:{encoded}@127.0.0.1:1/db",  # a driver that is not installed
    ]


def _hidden(password: str, text: str) -> bool:
    return password not in text and quote(password, safe="") not in text


@pytest.mark.parametrize("password", PASSWORDS)
def test_no_password_reaches_an_error_message(root, password):
    for url in _urls(password):
        for command in (("ls",), ("db", "current")):
            outcome = invoke("--root", str(root), "--db", url, *command)
            assert outcome.code == 2, (url, outcome)
            outcome.assert_one_line_error()
            assert _hidden(password, outcome.out + outcome.err), (url, outcome.err)


@examples(60)
@given(password=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"), min_size=6, max_size=30))
def test_generated_passwords_are_never_shown(password):
    for url in _urls(password):
        try:
            shown = str(DatabaseUrl.parse(url))
        except CachekeeperError as error:
            shown = str(error)
        assert _hidden(password, shown), (url, shown)


def test_a_query_parameter_password_is_hidden_when_connecting_fails(root):
    url = "postgresql://user@127.0.0.1:1/db?password=hunter2secret"
    with pytest.raises(CachekeeperError) as raised:
        Manifest.open(url)
    assert "hunter2secret" not in str(raised.value)
