"""Durations, sizes and ages: parsing what people type, printing what people read."""

from __future__ import annotations

import functools
import math
import re

from .errors import UsageError

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90m``, ``12h``, ``7d``, ``2w`` or ``1d12h``."""
    cleaned = text.strip().lower()
    parts = _DURATION_PART.findall(cleaned)
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned or not math.isfinite(seconds):
        raise UsageError(f"invalid duration {text!r}: use a number and a unit s, m, h, d or w, such as 90m, 12h, 7d")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in a size such as ``500MB``, ``20GiB`` or ``1.5T`` (k/M/G/T are powers of 1000)."""
    match = _SIZE.fullmatch(text.strip().lower())
    size = float(match.group(1)) * _SIZE_UNITS.get(match.group(2), math.nan) if match else math.nan
    if not math.isfinite(size):
        raise UsageError(f"invalid size {text!r}: use a number and a unit such as 500MB, 20GiB, 1.5TB")
    return int(size)


def format_bytes(count: int) -> str:
    """``1.2 GB``, ``340 kB``, ``12 B``: decimal units, as ``du --si`` and huggingface_hub print."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


_UNITS = (("w", "week", 7 * 86400), ("d", "day", 86400), ("h", "hour", 3600), ("m", "minute", 60), ("s", "second", 1))


def format_duration(seconds: float, *, parts: int = 2, words: bool = False) -> str:
    """``1w``, ``1h30m``, ``45s`` (as ``parse_duration`` reads them), or with ``words``
    ``3 days``, ``1 hour 30 minutes``: the ``parts`` largest units, the rest dropped."""
    remaining = max(0, round(seconds))
    shown: list[str] = []
    for short, name, length in _UNITS:
        count, remaining = divmod(remaining, length)
        if count and len(shown) < parts:
            shown.append(f"{count} {name}{'s' if count != 1 else ''}" if words else f"{count}{short}")
        elif shown:
            break  # only adjacent units: "1w2h" would read as a mistake
    if not shown:
        return "0 seconds" if words else "0s"
    return " ".join(shown) if words else "".join(shown)


def format_age(seconds: float) -> str:
    """``just now``, ``5 minutes ago``, ``3 days ago``."""
    for _, name, length in _UNITS[:-1]:
        if seconds >= length:
            return _age(int(seconds // length), name)
    return "just now"


@functools.cache
def _age(count: int, unit: str) -> str:
    # A plan of 100,000 artifacts says how old each is: the phrases repeat, so each is made once.
    return f"{count} {unit}{'s' if count != 1 else ''} ago"
