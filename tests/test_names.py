"""Names checked with string methods (a boot compiles no pattern) accept exactly what the regular
expressions they replaced accepted: commit shas, repo ids, layer names, keys, checksums, strike
records, key labels and host names, over generated text of every script."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cachekeeper.errors import CachekeeperError
from cachekeeper.facts import is_commit_sha, is_hex, is_repo_id, replace_runs
from cachekeeper.keys import is_layer_name, parse_key
from cachekeeper.store.layout import checksum_name, strike_file_name

# Text made mostly of the characters names are made of, with any other character now and then.
NAMEISH = st.text(
    st.one_of(st.sampled_from("abcdef0123456789xyz_.-/ ABZ"), st.characters()),
    max_size=50,
)
HEXISH = st.text(st.sampled_from("0123456789abcdefA"), min_size=14, max_size=42)
KEYISH = st.builds(lambda *parts: "-".join(parts), NAMEISH, NAMEISH, HEXISH) | NAMEISH


@given(HEXISH | NAMEISH)
def test_hex_and_commit_shas(text):
    assert is_commit_sha(text) == bool(re.fullmatch(r"[0-9a-f]{40}", text))
    assert is_hex(text, 16) == bool(re.fullmatch(r"[0-9a-f]{16}", text))


@given(NAMEISH)
@example("org/name")
@example("é/x")
@example("x/é٣")
@example("a/b/c")
@example("/a")
@example("a\n")
def test_repo_ids(text):
    assert is_repo_id(text) == bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", text))


@given(NAMEISH)
@example("")
@example("compile")
@example("_x")
def test_layer_names(text):
    assert is_layer_name(text) == bool(re.fullmatch(r"[a-z][a-z0-9_]*", text))


@given(KEYISH)
@example("compile-0123456789abcdef")
@example("compile--0123456789abcdef")
@example("compile-a--0123456789abcdef")
@example("compile-sm90-cu130-vllm0.33.0-3f9a1c2b7e4d5a60")
@example("compile-0123456789abcdef0")
def test_keys(text):
    found = re.fullmatch(r"(?P<layer>[a-z][a-z0-9_]*)-(?:(?P<label>[a-z0-9._-]+)-)?(?P<digest>[0-9a-f]{16})", text)
    if found is None:
        with pytest.raises(CachekeeperError):
            parse_key(text)
    else:
        assert parse_key(text) == (found.group("layer"), found.group("digest"))


@given(st.builds(lambda kind, digest: f"{kind}-{digest}.json", st.sampled_from(["attempt", "strike", "x"]), HEXISH))
@example("attempt-" + "a" * 32 + ".json")
@example("attempt-" + "a" * 32 + ".jsonx")
def test_checksums_and_strike_records(name):
    digest = name.partition("-")[2][:-5]
    for check, text, pattern in [
        (checksum_name, digest, r"[0-9a-f]{32}"),
        (strike_file_name, name, r"(?:attempt|strike)-[0-9a-f]{32}\.json"),
    ]:
        if re.fullmatch(pattern, text):
            assert check(text) == text
        else:
            with pytest.raises(CachekeeperError):
                check(text)


@given(NAMEISH)
@example("--a..b__c  d")
@example("ÉCOLE-x")
def test_runs_outside_a_set_become_one_replacement(text):
    label_safe = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._")
    host_safe = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
    assert replace_runs(text, label_safe, "-") == re.sub(r"[^a-z0-9._]+", "-", text)
    assert replace_runs(text, host_safe, "_") == re.sub(r"[^A-Za-z0-9.-]+", "_", text)
