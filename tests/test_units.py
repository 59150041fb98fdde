import pytest

from cachekeeper.errors import UsageError
from cachekeeper.units import format_age, format_bytes, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1d12h", 129600),
        ("30s", 30),
        ("1.5h", 5400),
        (" 7D ", 604800),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-7d", "7 d", "7d7", "1e3s", "7dd"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(UsageError, match="such as 90m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("500MB", 500_000_000), ("20GiB", 20 * 2**30), ("1.5T", 1_500_000_000_000), ("100", 100), ("2 kib", 2048)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "10XB", "-1GB", "1,5GB"])
def test_bad_sizes(text):
    with pytest.raises(UsageError):
        parse_size(text)


def test_human_formats():
    assert format_bytes(12) == "12 B"
    assert format_bytes(1_234_567) == "1.2 MB"
    assert format_bytes(5 * 10**15) == "5000.0 TB"
    assert format_age(5) == "just now"
    assert format_age(120) == "2 minutes ago"
    assert format_age(3600) == "1 hour ago"
    assert format_age(3 * 86400 + 5) == "3 days ago"
    assert format_age(15 * 86400) == "2 weeks ago"
