"""vLLM's own compile-cache rules, per vLLM release: what its hash covers and what it ignores.

cachekeeper's compile key is as fine as vLLM's own key plus what vLLM misses, and no finer: an
engine argument or a ``VLLM_*`` variable that vLLM's hash ignores only costs a recompile when it
changes the key (vLLM fixed the same mistake in its own key, PR #47356). Which ones vLLM ignores
changes from release to release, so the rules are data: one TOML file per vLLM minor version
beside this module (``0.33.toml``), each naming the versions it covers, the vLLM source it was
read from, and its lists. ``tests/test_vllm_agreement.py`` checks them against the real vLLM.

The boot never parses TOML: ``_tables.py`` is generated from the files
(``python -m cachekeeper.vllm_rules.generate``; a test fails when it is stale) and turned into
``VllmRules`` once, on first use.

**No rules** (``rules_for`` gives None) for a version no file covers — another release, a
pre-release, dev or post build, an unknown version, or no vLLM at all. The compile key then keys
conservatively: every engine argument but the server's own options, and every variable that may
change compiled code (``facts.is_relevant_env``). A finer key only costs recompiles; a coarser one
could serve a wrong cache.
"""

from __future__ import annotations

import functools

from ..values import Value
from ._tables import TABLES

VLLM_PREFIX = "VLLM_"


class VllmRules(Value):
    """The rules of one vLLM minor version (see the TOML file named ``file`` for each list's meaning)."""

    file: str
    versions: str  # ">=0.33,<0.34"
    read_from: str
    source: tuple[str, ...]
    ignored_engine_args: frozenset[str]
    kept_engine_args: frozenset[str]
    memory_engine_args: frozenset[str]
    hashed_env: frozenset[str]
    per_pod_env: frozenset[str]
    overridden_env: frozenset[str]
    ignored_env: frozenset[str]
    frontend_args: frozenset[str]

    def covers(self, version: str) -> bool:
        found = release(version)
        if found is None:
            return False
        lowest, below = version_range(self.versions)
        return lowest <= found < below

    def keys_engine_arg(self, name: str) -> bool:
        """Whether vLLM's hash covers engine argument ``name`` (dotted for a field of a dict
        argument: ``compilation_config.cache_dir``), or cachekeeper keeps it regardless."""
        if name in self.kept_engine_args:
            return True
        parts = name.split(".")
        return not any(".".join(parts[:end]) in self.ignored_engine_args for end in range(1, len(parts) + 1))

    def keys_env(self, name: str) -> bool | None:
        """True: vLLM hashes the variable (and it is not per pod); False: vLLM ignores it, does not
        know it, sets it itself, or it differs per pod; None: not vLLM's to say (Inductor's,
        Triton's, ...)."""
        if name in self.per_pod_env or name in self.overridden_env:
            return False
        if name in self.hashed_env:
            return True
        if name.startswith(VLLM_PREFIX):
            return False
        return None


def release(version: str) -> tuple[int, ...] | None:
    """``(0, 33, 0)`` for ``0.33.0`` or ``0.33.0+cu128`` (a local build label); None for a
    pre-release, a dev or post build, or anything else: their rules may differ from the release's.
    (No regular expression: compiling one would cost the boot more than this.)"""
    public, _, local = version.strip().partition("+")
    parts = public.split(".")
    if not all(part.isascii() and part.isdigit() for part in parts):
        return None
    if local and not all(char.isascii() and (char.isalnum() or char == ".") for char in local):
        return None
    return tuple(int(part) for part in parts)


def version_range(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``">=0.33,<0.34"`` as (lowest, below)."""
    lower, comma, upper = text.replace(" ", "").partition(",")
    lowest = release(lower[2:]) if lower.startswith(">=") else None
    below = release(upper[1:]) if upper.startswith("<") and not upper.startswith("<=") else None
    if not comma or lowest is None or below is None or "+" in text:
        raise ValueError(f'vllm = {text!r}: write the range as ">=0.33,<0.34"')
    return lowest, below


@functools.cache
def all_rules() -> tuple[VllmRules, ...]:
    return tuple(_rules(table) for table in TABLES)


@functools.lru_cache(maxsize=32)
def rules_for(version: object) -> VllmRules | None:
    """The rules for a ``vllm`` fact's value, or None where no file covers it (then key conservatively)."""
    if not isinstance(version, str):
        return None
    return next((rules for rules in all_rules() if rules.covers(version)), None)


@functools.cache
def keyed_env_anywhere() -> frozenset[str]:
    """Every variable some vLLM release hashes and cachekeeper keys with it: they are facts."""
    return frozenset().union(*(rules.hashed_env - rules.per_pod_env for rules in all_rules()))


@functools.cache
def frontend_args_anywhere() -> frozenset[str]:
    """Options of ``vllm serve`` that are the API server's own in some release, not the engine's."""
    return frozenset().union(*(rules.frontend_args for rules in all_rules()))


def _rules(table: dict[str, str | tuple[str, ...]]) -> VllmRules:
    def text(name: str) -> str:
        value = table[name]
        assert isinstance(value, str), name
        return value

    def names(name: str) -> frozenset[str]:
        value = table[name]
        assert isinstance(value, tuple), name
        return frozenset(value)

    source = table["source"]
    assert isinstance(source, tuple)
    return VllmRules(
        file=text("file"),
        versions=text("vllm"),
        read_from=text("read_from"),
        source=source,
        ignored_engine_args=names("ignored_engine_args"),
        kept_engine_args=names("kept_engine_args"),
        memory_engine_args=names("memory_engine_args"),
        hashed_env=names("hashed_env"),
        per_pod_env=names("per_pod_env"),
        overridden_env=names("overridden_env"),
        ignored_env=names("ignored_env"),
        frontend_args=names("frontend_args"),
    )


__all__ = ["VllmRules", "all_rules", "release", "rules_for"]
