"""Make ``_tables.py`` from the rule files (``*.toml``) beside it, so that no boot parses TOML.

    python -m cachekeeper.vllm_rules.generate          # writes _tables.py
    python -m cachekeeper.vllm_rules.generate --check  # exit 1 when _tables.py is stale

Every file is validated: its keys, its lists (strings only), its version range, and that no two
files cover the same release.
"""

from __future__ import annotations

import itertools
import sys
import tomllib
from importlib import resources
from pathlib import Path

from . import version_range

TEXT_KEYS = ("vllm", "read_from")
LIST_KEYS = (
    "source",
    "ignored_engine_args",
    "kept_engine_args",
    "memory_engine_args",
    "hashed_env",
    "per_pod_env",
    "overridden_env",
    "ignored_env",
    "frontend_args",
)
TABLES_FILE = "_tables.py"
HEADER = (
    '"""vLLM\'s compile-cache rules, one table per rule file. Generated from the TOML files beside it by\n'
    '``python -m cachekeeper.vllm_rules.generate``: do not edit."""\n'
)


def rule_files() -> list[tuple[str, str]]:
    """(name, text) of every rule file in the package, in name order."""
    package = resources.files(__package__ or "cachekeeper.vllm_rules")
    return sorted((e.name, e.read_text(encoding="utf-8")) for e in package.iterdir() if e.name.endswith(".toml"))


def read(name: str, text: str) -> dict[str, str | tuple[str, ...]]:
    document = tomllib.loads(text)
    unknown = set(document) - set(TEXT_KEYS) - set(LIST_KEYS)
    missing = (set(TEXT_KEYS) | set(LIST_KEYS)) - set(document)
    if unknown or missing:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    table: dict[str, str | tuple[str, ...]] = {"file": name}
    for key in TEXT_KEYS:
        if not isinstance(document[key], str):
            raise ValueError(f"{name}: {key} must be a string")
        table[key] = document[key]
    version_range(str(document["vllm"]))
    for key in LIST_KEYS:
        value = document[key]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{name}: {key} must be a list of strings")
        if len(set(value)) != len(value):
            raise ValueError(f"{name}: {key} names something twice")
        table[key] = tuple(value) if key == "source" else tuple(sorted(value))
    return table


def render() -> str:
    tables = [read(name, text) for name, text in rule_files()]
    ranges = sorted((version_range(str(t["vllm"])), t["file"]) for t in tables)
    for ((_, below), first), ((lowest, _), second) in itertools.pairwise(ranges):
        if lowest < below:
            raise ValueError(f"{first} and {second} cover the same releases")
    lines = [HEADER, "TABLES: tuple[dict[str, str | tuple[str, ...]], ...] = ("]
    for table in tables:
        lines.append("    {")
        for key, value in table.items():
            if isinstance(value, str):
                lines.append(f'        "{key}": {_quoted(value)},')
            elif len(value) == 1:
                lines.append(f'        "{key}": ({_quoted(value[0])},),')
            else:
                lines.append(f'        "{key}": (')
                lines.extend(f"            {_quoted(item)}," for item in value)
                lines.append("        ),")
        lines.append("    },")
    lines.append(")")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    if '"' in text or "\\" in text:
        raise ValueError(f"{text!r}: rule files hold no quotes or backslashes")
    return f'"{text}"'


def main(argv: list[str]) -> int:
    target = Path(__file__).with_name(TABLES_FILE)
    text = render()
    if "--check" in argv:
        stale = not target.is_file() or target.read_text(encoding="utf-8") != text
        if stale:
            print(f"{target} is stale: run python -m cachekeeper.vllm_rules.generate", file=sys.stderr)
        return 1 if stale else 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
