"""Bad input, generated: durations, sizes, keys, target files, command lines and environment
variables. Every one ends in exit code 2 with one line on stderr, no traceback, and nothing in
the cache root changed. The CLI runs in-process (see adversary.invoke); a few cases run the real
command, where what the operating system hands over (bytes, locale, environment) matters."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import cachekeeper
from cachekeeper import uses
from cachekeeper.errors import UnknownKeyError, UsageError
from cachekeeper.gpus import parse_gpu
from cachekeeper.keys import parse_key
from cachekeeper.units import parse_duration, parse_size

from .adversary import examples, invoke, snapshot
from .helpers import run_cli

# --- units and keys ----------------------------------------------------------------------------

# What a duration and a size look like, written here independently of units.py.
DURATION = re.compile(r"(\d+(\.\d+)?[smhdw])+")
SIZE = re.compile(r"\d+(\.\d+)?\s*(|b|k|kb|m|mb|g|gb|t|tb|kib|mib|gib|tib)")
KEY = re.compile(r"[a-z][a-z0-9_]*-([a-z0-9._-]+-)?[0-9a-f]{16}")

texts = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.smhdwkMGTiBb -+e_", max_size=12),  # near misses
    st.from_regex(DURATION, fullmatch=True),
    st.from_regex(SIZE, fullmatch=True),
)


def _value(text: str, units: dict[str, float]) -> float | None:
    """What ``text`` means by the grammar above, computed apart from units.py; None if nothing."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip().lower())
    if not parts:
        return None
    value = sum(float(number) * units.get(unit, math.nan) for number, unit in parts)
    return value if math.isfinite(value) else None


SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
BYTES = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


@pytest.mark.slow
@examples(300)
@given(texts)
def test_a_duration_is_a_finite_number_of_seconds_or_a_usage_error(text):
    meant = _value(text, SECONDS) if DURATION.fullmatch(text.strip().lower()) else None
    try:
        seconds = parse_duration(text)
    except UsageError as error:
        assert meant is None and "\n" not in str(error)
        return
    assert meant is not None and math.isclose(seconds, meant)


@pytest.mark.slow
@examples(300)
@given(texts)
def test_a_size_is_a_whole_number_of_bytes_or_a_usage_error(text):
    meant = _value(text, BYTES) if SIZE.fullmatch(text.strip().lower()) else None
    try:
        size = parse_size(text)
    except UsageError as error:
        assert meant is None and "\n" not in str(error)
        return
    assert meant is not None and isinstance(size, int) and abs(size - meant) <= max(1.0, meant * 1e-9)


def test_numbers_too_large_for_a_float_are_refused_not_a_crash():
    for text in ("9" * 400, "9" * 400 + "GB"):
        with pytest.raises(UsageError):
            parse_size(text)
    with pytest.raises(UsageError):
        parse_duration("9" * 400 + "d")


@examples(300)
@given(st.one_of(st.text(), st.from_regex(KEY, fullmatch=True)))
def test_a_key_parses_only_when_it_is_shaped_like_one(text):
    try:
        layer, digest = parse_key(text)
    except UnknownKeyError:
        assert not KEY.fullmatch(text)
        return
    assert KEY.fullmatch(text) and text.startswith(layer + "-") and text.endswith(digest)


# --- a root worth protecting -------------------------------------------------------------------

TARGET = '[target]\ngpu = "cpu"\nlayers = ["compile"]\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A directory holding a target and a root with one published, synced artifact."""
    project = tmp_path_factory.mktemp("bad-input")
    (project / "cachekeeper.toml").write_text(TARGET)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        with cachekeeper.activate(project / "root", layers=["compile"]) as ck:
            (ck.layers["compile"].path / "inductor" / "kernel").write_text("compiled")
        uses.release_all()
        assert invoke("--root", str(project / "root"), "sync").code == 0
    return project


@pytest.fixture
def root(project, monkeypatch) -> Path:
    monkeypatch.chdir(project)
    return project / "root"


def rejected(root: Path, *args: str, env=None) -> str:
    """Run a command that must be refused; its one-line error."""
    before = snapshot(root)
    outcome = invoke("--root", str(root), *args, env=env)
    outcome.assert_usage_error()
    assert snapshot(root) == before
    return outcome.err.strip()


# --- command lines -------------------------------------------------------------------------------


def _not(pattern: re.Pattern, normal=lambda t: t.strip().lower()):
    return lambda text: not pattern.fullmatch(normal(text))


bad_durations = st.text(max_size=20).filter(_not(DURATION))
bad_sizes = st.text(max_size=20).filter(_not(SIZE))
bad_keys = st.text(max_size=40).filter(_not(KEY, lambda t: t))
bad_counts = st.one_of(
    st.text(alphabet="abcxyz.,-+ e", max_size=6), st.integers(max_value=-1).map(str)
)  # no digits, or < 0
bad_layers = st.text(max_size=12).filter(lambda t: not re.fullmatch(r"[a-z][a-z0-9_]*", t))
bad_models = st.text(max_size=20).filter(lambda t: not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", t))
bad_urls = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\0"), max_size=30
).filter(lambda t: t.strip() and not t.strip().lower().startswith(("sqlite", "postgres")))
unknown_options = st.from_regex(r"--[a-z][a-z-]{0,12}", fullmatch=True).filter(
    lambda t: (
        t
        not in {
            "--root",
            "--db",
            "--help",
            "--json",
            "--target",
            "--layer",
            "--model",
            "--key",
            "--yes",
            "--dry-run",
            "--older-than",
            "--stale",
            "--keep-last",
            "--max-size",
            "--since",
            "--rebuild",
            "--busy",
        }
    )
)

KEY_COMMANDS = [
    ("pin", "{}"),
    ("unpin", "{}"),
    ("inspect", "{}"),
    ("verify", "{}"),
    ("prune", "--key", "{}"),
    ("explain", "{}", "compile-a-0123456789abcdef"),
    ("explain", "compile-a-0123456789abcdef", "{}"),
]
DB_COMMANDS = [
    ("ls",),
    ("check",),
    ("prune", "--older-than", "7d"),
    ("verify",),
    ("stats",),
    ("sync",),
    ("weights",),
    ("doctor",),
    ("db", "current"),
]
COMMANDS = [*DB_COMMANDS, ("fingerprint",), ("snapshot-tag",)]


def _fill(template: tuple[str, ...], value: str) -> list[str]:
    return [value if part == "{}" else part for part in template]


def _scoped(option: str, values: st.SearchStrategy) -> st.SearchStrategy:
    """``ls``, ``verify`` or ``prune`` narrowed by ``option`` to a bad value."""
    commands = st.sampled_from([["ls"], ["verify"], ["prune", "--older-than", "1d"]])
    return st.tuples(commands, values).map(lambda c: [*c[0], option, c[1]])


command_lines = st.one_of(
    bad_durations.map(lambda v: ["prune", "--older-than", v]),
    bad_durations.map(lambda v: ["stats", "--since", v]),
    bad_sizes.map(lambda v: ["prune", "--max-size", v]),
    bad_counts.map(lambda v: ["prune", "--keep-last", v]),
    bad_durations.map(lambda v: ["sync", "--keep-events", v]),
    bad_durations.map(lambda v: ["prune", "--older-than", "1d", "--keep-events", v]),
    bad_counts.map(lambda v: ["ls", "--limit", v]),
    st.tuples(st.sampled_from(KEY_COMMANDS), bad_keys).map(lambda c: _fill(*c)),
    _scoped("--layer", bad_layers),
    _scoped("--model", bad_models),
    st.tuples(st.sampled_from(COMMANDS), unknown_options).map(lambda c: [*c[0], c[1]]),
    st.sampled_from(COMMANDS).map(lambda c: [*c, "--target"]),  # an option without its value
    st.tuples(st.sampled_from(COMMANDS), st.text(min_size=1, max_size=10).filter(str.isalnum)).map(
        lambda c: [*c[0], "--target", f"no-such-{c[1]}.toml"]
    ),
    st.tuples(st.sampled_from(DB_COMMANDS), bad_urls).map(lambda c: ["--db", c[1], *c[0]]),
    st.text(max_size=10).filter(lambda t: t not in {"wait", "cold"}).map(lambda v: ["run", "--busy", v, "--", "true"]),
    st.text(min_size=1, max_size=12).filter(lambda t: t.strip() and not t.startswith("-")).map(lambda v: [f"no-{v}"]),
)


@pytest.mark.slow
@examples(150)
@given(command_lines)
def test_a_bad_command_line_is_refused_in_one_line_and_changes_nothing(root, args):
    rejected(root, *args)


def test_a_key_that_is_well_formed_but_unknown_is_no_crash(root):
    key = "compile-a-0123456789abcdef"
    for args in (("pin", key), ("inspect", key)):
        assert "no artifact" in rejected(root, *args)
    assert invoke("--root", str(root), "verify", key).code == 0  # nothing to check is not an error


@pytest.mark.parametrize("value", ["", " ", "\0", "a\0b"])
def test_an_empty_or_impossible_root_is_refused(root, value):
    rejected(root, "--root", value, "ls")  # the later --root wins: this one


def test_a_root_that_is_a_file_is_refused_from_the_option_and_the_environment(root, project):
    assert "not a directory" in rejected(root, "--root", str(project / "cachekeeper.toml"), "ls")
    before = snapshot(root)
    outcome = invoke("prune", "--older-than", "0s", env={"CACHEKEEPER_ROOT": str(project / "cachekeeper.toml")})
    outcome.assert_usage_error()
    assert snapshot(root) == before


@examples(60)
@given(bad_urls)
def test_a_bad_database_url_in_the_environment_is_refused(root, url):
    before = snapshot(root)
    outcome = invoke("--root", str(root), "ls", env={"CACHEKEEPER_DB": url, "CACHEKEEPER_DEBUG": None})
    outcome.assert_usage_error()
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////proc/no/such/dir/manifest.db",
        "sqlite:///{root}",
        "sqlite:///a\0b",
        "mysql://localhost/x",
        "postgresql://user:secret@localhost:notaport/db",
        "postgresql+nodriver://localhost/x",
    ],
)
def test_a_database_url_that_cannot_work_is_refused_without_its_password(root, url):
    message = rejected(root, "--db", url.format(root=root), "ls")
    assert "secret" not in message


# --- target files --------------------------------------------------------------------------------

SHA = "0123456789abcdef0123456789abcdef01234567"
valid_targets = st.fixed_dictionaries(
    {
        "target": st.fixed_dictionaries(
            {"gpu": st.sampled_from(["cpu", "H100", "h100:2", "A100-80GB", "L4:8"])},
            optional={
                "model": st.sampled_from(["org/model", "Qwen/Qwen2.5-0.5B-Instruct"]),
                "packages": st.dictionaries(
                    st.sampled_from(["torch", "vllm", "triton"]), st.sampled_from(["2.9.0", "0.33.0"])
                ),
                "engine": st.dictionaries(
                    st.sampled_from(["max_model_len", "dtype", "compilation_config"]),
                    st.one_of(st.integers(1, 10**6), st.sampled_from(["auto", "bfloat16"]), st.just({"level": 3})),
                ),
                "env": st.dictionaries(
                    st.sampled_from(["VLLM_USE_V1", "TORCH_CUDA_ARCH_LIST"]), st.sampled_from(["1", "9.0"])
                ),
                "python": st.just("3.12.7"),
                "driver": st.just("580.95.05"),
                "image": st.just("v3"),
                "cuda": st.just("12.8"),
                "warmup": st.just(["modal", "run", "app.py::warm"]),
                "strikes": st.integers(0, 5),
            },
        )
    }
).filter(lambda d: not (d["target"]["gpu"] == "cpu" and "driver" in d["target"]))

STRING_SETTINGS = ["gpu", "model", "revision", "python", "cuda", "driver", "image"]
TABLE_SETTINGS = ["packages", "engine", "env"]
wrong_scalars = st.one_of(
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.just({"a": 1}),
    st.sampled_from(["", "   "]),
)
odd_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


def _is_gpu(text: str) -> bool:
    try:
        parse_gpu(text)
    except UsageError:
        return False
    return True


def _with_model(document: dict) -> dict:
    """Any model named also pins its revision: resolving "main" offline is another error."""
    if "model" in document["target"]:
        document["target"]["revision"] = SHA
    return document


def _mutations(document: dict) -> st.SearchStrategy:
    target = document["target"]

    def put(where, name, value):
        changed = json.loads(json.dumps(document))
        (changed["target"] if where == "target" else changed)[name] = value
        return changed

    def drop(name):
        changed = json.loads(json.dumps(document))
        del changed["target"][name]
        return changed

    choices = [
        st.tuples(st.sampled_from(STRING_SETTINGS), wrong_scalars).map(lambda c: put("target", *c)),
        st.tuples(
            st.sampled_from([*TABLE_SETTINGS, "layers"]), st.one_of(st.integers(), st.just("x"), st.just([1]))
        ).map(lambda c: put("target", *c)),
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
        .filter(
            lambda n: n not in target and n not in STRING_SETTINGS + TABLE_SETTINGS + ["layers", "warmup", "strikes"]
        )
        .map(lambda name: put("target", name, "x")),
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
        .filter(lambda n: n not in ("target", "roots", "layers"))
        .map(lambda name: put("top", name, 1)),
        odd_text.filter(lambda t: not _is_gpu(t)).map(lambda t: put("target", "gpu", t)),
        st.just(drop("gpu")),
        st.sampled_from(["H100:0", "cpu:1", "H100:-1", "H100:two"]).map(lambda t: put("target", "gpu", t)),
        odd_text.filter(lambda t: not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", t)).map(
            lambda t: put("target", "model", t)
        ),
        odd_text.filter(lambda t: t not in ("torch", "triton", "vllm", "flashinfer")).map(
            lambda t: put("target", "packages", {t: "1"})
        ),
        st.sampled_from([math.nan, math.inf, -math.inf]).map(lambda v: put("target", "engine", {"max_model_len": v})),
        st.just(put("target", "engine", {"when": "DATETIME"})),
        st.just(put("target", "engine", {"a": {"b": 1}, "a.b": 2})),  # one argument, twice
        st.just(put("target", "gpu", "cpu")).map(lambda d: {**d, "target": {**d["target"], "driver": "580.95.05"}}),
        st.one_of(st.booleans(), st.just({"a": 1}), st.floats()).map(lambda v: put("target", "env", {"VLLM_X": v})),
        st.just(put("target", "layers", ["weights"]) if "model" not in target else drop("gpu")),
        odd_text.filter(lambda t: t not in ("weights", "compile", "snapshot")).map(
            lambda t: put("target", "layers", [t])
        ),
        st.sampled_from(
            [
                {"x": {"facts": [1]}},
                {"x": {"facts": []}},
                {"X": {"facts": ["python"]}},
                {"x": {"facts": ["python"], "env": ["A=B"]}},
                {"x": {"facts": ["python"], "colour": "red"}},
                {"compile": {"facts": ["python"]}},
            ]
        ).map(lambda layers: put("top", "layers", layers)),
        st.sampled_from(
            [
                {"compile": 3},
                {"compile": ""},
                {"compile": "a\0b"},
                {"nosuchlayer": "/tmp"},
                {"compile": "cachekeeper.toml"},
            ]
        ).map(lambda roots: put("top", "roots", roots)),
        st.sampled_from(["", "  ", [], ["", "x"], [1], '"unterminated']).map(lambda w: put("target", "warmup", w)),
        st.sampled_from([-1, 1.5, "2", True, 10**6]).map(lambda n: put("target", "strikes", n)),
    ]
    return st.one_of(choices)


def toml(document: dict) -> str:
    """A TOML text for ``document``: tables as [headers], everything else inline."""
    lines = [
        f"{_toml_key(name)} = {_toml_value(value)}" for name, value in document.items() if not isinstance(value, dict)
    ]
    for name, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{_toml_key(name)}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
    return "\n".join(lines) + "\n"


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _toml_value(value) -> str:
    if value == "DATETIME":
        return "1979-05-27T07:32:00Z"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


BREAKERS = [
    "[target\n",
    'gpu = "cpu"\n',
    "= 1\n",
    'x = "unterminated\n',
    "[target]\n",
    "\x00\n",
    "a = 1\na = 2\n",
    "[[target]]\n",
]
broken_texts = st.one_of(
    st.tuples(valid_targets.map(_with_model).map(toml), st.sampled_from(BREAKERS), st.integers(0, 20)).map(
        lambda c: "\n".join(c[0].split("\n")[: c[2]]) + "\n" + c[1] + "\n".join(c[0].split("\n")[c[2] :])
    ),
    st.binary(max_size=40).map(lambda b: b"\xff" + b),  # not UTF-8
)
TARGET_COMMANDS = [
    ("check",),
    ("fingerprint",),
    ("snapshot-tag",),
    ("prune", "--older-than", "1d"),
    ("run", "--", "true"),
]


def _valid_toml(text: str | bytes) -> bool:
    import tomllib

    try:
        tomllib.loads(text if isinstance(text, str) else text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    return True


@pytest.mark.slow
@examples(120)
@given(valid_targets.map(_with_model).flatmap(_mutations), st.sampled_from(TARGET_COMMANDS))
def test_a_target_of_the_wrong_shape_is_refused_naming_the_file(root, project, document, command):
    path = project / "bad.toml"
    path.write_text(toml(document), encoding="utf-8")
    message = rejected(root, *command[:1], "--target", str(path), *command[1:])
    assert str(path) in message


@examples(60)
@given(broken_texts, st.sampled_from(TARGET_COMMANDS))
def test_a_target_that_is_not_toml_is_refused_naming_the_file(root, project, text, command):
    assume(not _valid_toml(text))
    path = project / "broken.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    message = rejected(root, *command[:1], "--target", str(path), *command[1:])
    assert str(path) in message


@examples(40)
@given(valid_targets.map(_with_model), st.sampled_from(TARGET_COMMANDS[:4]))
def test_every_well_formed_target_is_read(root, project, document, command):
    """The generator of bad targets starts from good ones: they must all be accepted."""
    path = project / "good.toml"
    path.write_text(toml(document))
    outcome = invoke("--root", str(root), *command[:1], "--target", str(path), *command[1:], "--json")
    assert outcome.code in (0, 1), outcome.err
    json.loads(outcome.out)


# --- the real command ---------------------------------------------------------------------------


def test_the_real_command_refuses_bytes_that_are_no_text_and_an_unusable_environment(root, project):
    """What only a real process shows: arguments that are not UTF-8, a C locale, the variables."""
    before = snapshot(root)
    cases = [
        (["--root", str(root), "prune", "--older-than", os.fsdecode(b"\xff\xfe7d")], {}),
        (["prune", "--older-than", "0s"], {"CACHEKEEPER_ROOT": str(project / "cachekeeper.toml")}),
        (["--root", str(root), "ls"], {"CACHEKEEPER_DB": "not a url", "LC_ALL": "C", "LANG": "C"}),
        (["--root", str(root), "check", "--target", os.fsdecode(b"\xffmissing.toml")], {"LC_ALL": "C"}),
    ]
    for argv, env in cases:
        result = run_cli(*argv, cwd=project, env=env)
        assert result.returncode == 2, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    assert snapshot(root) == before
