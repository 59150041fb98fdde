"""The engine arguments of a ``vllm serve`` command line: what ``cachekeeper run -- vllm serve ...``
keys the caches by, since that is what will run.

Read with vLLM's own parser when vLLM is importable in this Python: aliases, flags that take no
value, ``--config`` files and dotted options (``-cc.mode=3``) come out exactly as the server will
see them. Otherwise a plain reader, documented here because it is a guess at vLLM's grammar:

- ``vllm serve MODEL`` or ``--model MODEL``; ``--revision REV``;
- ``--kebab-case value`` and ``--kebab-case=value``: the engine argument ``kebab_case``;
- ``--flag`` followed by another option or by nothing is ``True``; ``--no-flag`` is ``False``
  (vLLM pairs every boolean argument so). Put the model first: ``vllm serve --enforce-eager MODEL``
  reads ``MODEL`` as the flag's value;
- a value that is JSON is parsed (``--compilation-config '{"mode": 3}'``, ``8192``, ``0.5``,
  ``true``); anything else is a string. ``--name.field value`` (``-cc.mode=3``) sets one field of
  a dict argument; as with vLLM 0.33's parser, such fields replace a JSON value given for it;
- vLLM's short options: ``-tp``, ``-pp``, ``-dp``, ``-q``, ``-cc``, ``-ac``, ``-sc``, ``-ep``, ...
  and ``-O2`` (the optimization level);
- the API server's own options (``--host``, ``--port``, ``--api-key``, TLS, tool parsers: the rule
  files' ``frontend_args``) are not engine arguments and are dropped;
- ``--config FILE`` cannot be read: it needs vLLM's parser.

Both readers give plain values, as a target's ``[target.engine]`` table holds them (enums by
name, or by number for integer enums; numbers as numbers), so that the key of a command line and
of the same arguments in a target agree. vLLM's parser leaves out what equals vLLM's default.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from . import facts as f
from . import vllm_rules
from .engine_args import MODEL, REVISION
from .errors import UsageError
from .keys import ABSENT, FactChange
from .values import Value

if TYPE_CHECKING:
    from .target import Target

VLLM_PARSER = "vllm"
PLAIN_READER = "plain"

# vLLM 0.33's short options (vllm/entrypoints/common/cli_args.py, make_arg_parser).
SHORT_OPTIONS = {
    "-q": "quantization",
    "-tp": "tensor_parallel_size",
    "-pp": "pipeline_parallel_size",
    "-dcp": "decode_context_parallel_size",
    "-pcp": "prefill_context_parallel_size",
    "-dp": "data_parallel_size",
    "-dpn": "data_parallel_rank",
    "-dpr": "data_parallel_start_rank",
    "-dpl": "data_parallel_size_local",
    "-dpa": "data_parallel_address",
    "-dpp": "data_parallel_rpc_port",
    "-dpb": "data_parallel_backend",
    "-dph": "data_parallel_hybrid_lb",
    "-dpe": "data_parallel_external_lb",
    "-dpm": "data_parallel_multi_port_external_lb",
    "-ep": "enable_expert_parallel",
    "-n": "nnodes",
    "-r": "node_rank",
    "-sc": "speculative_config",
    "-dc": "diffusion_config",
    "-cc": "compilation_config",
    "-ac": "attention_config",
    "-asc": "api_server_count",
}
OPTIMIZATION_LEVEL = "optimization_level"
_SAME = object()


class ServeCommand(Value):
    """What a ``vllm serve`` command line will run."""

    model: str | None
    revision: str | None
    engine: Mapping[str, Any]
    parser: str  # VLLM_PARSER or PLAIN_READER


def serve_arguments(command: Sequence[str]) -> list[str] | None:
    """The arguments after ``serve`` of ``vllm serve ...`` (or ``python -m vllm.entrypoints.cli.main
    serve ...``); None for any other command."""
    if len(command) >= 2 and os.path.basename(command[0]) == "vllm" and command[1] == "serve":
        return list(command[2:])
    module = ["-m", "vllm.entrypoints.cli.main", "serve"]
    if len(command) >= 4 and os.path.basename(command[0]).startswith("python") and list(command[1:4]) == module:
        return list(command[4:])
    return None


def read_serve_command(command: Sequence[str], *, use_vllm: bool = True) -> ServeCommand | None:
    """What ``command`` will run, or None when it is not ``vllm serve``. ``use_vllm=False`` skips
    vLLM's parser even where vLLM is importable."""
    arguments = serve_arguments(command)
    if arguments is None:
        return None
    found = read_with_vllm(arguments) if use_vllm else None
    return found if found is not None else read_plain(arguments)


# --- vLLM's own parser --------------------------------------------------------------------------


def read_with_vllm(arguments: Sequence[str]) -> ServeCommand | None:
    """The arguments as vLLM's own ``vllm serve`` parser reads them; None where vLLM cannot be
    imported or cannot build its parser here (another release's layout, no device to infer)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        parser, fields = _vllm_parser()
    except Exception:  # any failure of vLLM's own import or parser means: read it plainly
        return None
    try:
        parsed, defaults = parser.parse_args(list(arguments)), parser.parse_args([])
    except SystemExit:  # argparse has said why on stderr
        raise UsageError("vllm serve would refuse these arguments (its parser says why above)") from None
    engine: dict[str, Any] = {}
    for name in sorted(fields):
        if name in (MODEL, REVISION) or not hasattr(parsed, name):
            continue
        changed = _changed(_plain(getattr(parsed, name)), _plain(getattr(defaults, name, None)))
        if changed is not _SAME:
            engine[name] = changed
    model = getattr(parsed, "model_tag", None) or getattr(parsed, MODEL, None)
    revision = getattr(parsed, REVISION, None)
    return ServeCommand(
        None if model is None else str(model), None if revision is None else str(revision), engine, VLLM_PARSER
    )


def _vllm_parser() -> tuple[Any, set[str]]:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.common.cli_args import make_arg_parser
    except ImportError:  # releases before 0.33 kept it here
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    parser = make_arg_parser(FlexibleArgumentParser())
    return parser, {field.name for field in dataclasses.fields(EngineArgs)}


def _plain(value: Any) -> Any:
    """A value as a target file would write it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return int(value) if isinstance(value, int) else value.name
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item) for item in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, str):
        return _number_or_text(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def _changed(value: Any, default: Any) -> Any:
    """``value`` where it differs from ``default``: for dicts, only the entries that differ."""
    if isinstance(value, dict) and isinstance(default, dict):
        differing = {}
        for key, item in value.items():
            changed = _changed(item, default[key]) if key in default else item
            if changed is not _SAME:
                differing[key] = changed
        return differing or _SAME
    return _SAME if value == default and type(value) is type(default) else value


# --- the plain reader ---------------------------------------------------------------------------


def read_plain(arguments: Sequence[str]) -> ServeCommand:
    """The arguments read without vLLM (see the module's documentation for the grammar)."""
    model: str | None = None
    revision: str | None = None
    engine: dict[str, Any] = {}
    dotted: dict[str, dict[str, Any]] = {}
    tokens = list(arguments)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not _is_option(token):
            if model is not None:
                raise UsageError(f"vllm serve: unexpected argument {token!r} (the model is already {model!r})")
            model = token
            continue
        name, value = _option(token)
        if value is None and index < len(tokens) and not _is_option(tokens[index]):
            value, index = tokens[index], index + 1
        if name == "config":
            raise UsageError("vllm serve --config FILE: cachekeeper reads that file only with vLLM importable here")
        if name == MODEL or name == REVISION:
            if not isinstance(value, str):
                raise UsageError(f"vllm serve --{name} needs a value")
            model, revision = (value, revision) if name == MODEL else (model, value)
            continue
        if value is None:  # a flag alone
            parsed: Any = not name.startswith("no_")
            name = name[3:] if name.startswith("no_") else name
        else:
            parsed = _number_or_text(value, json_values=True)
        if name.split(".")[0] in vllm_rules.frontend_args_anywhere():
            continue
        _set(engine, dotted, name, parsed)
    # As vLLM 0.33's parser does: fields given one by one replace a JSON value of the same argument.
    engine.update(dotted)
    return ServeCommand(model, revision, engine, PLAIN_READER)


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _is_number(token)


def _option(token: str) -> tuple[str, str | None]:
    """``(engine argument name, value given with =)`` of one option token."""
    text, equals, value = token.partition("=")
    given = value if equals else None
    if text.startswith("--"):
        return text[2:].replace("-", "_"), given
    if text.startswith("-O") and (text == "-O" or text[2:].isdigit()):
        return OPTIMIZATION_LEVEL, given if text == "-O" else text[2:]
    short, dot, rest = text.partition(".")
    if short not in SHORT_OPTIONS:
        raise UsageError(f"vllm serve: unknown short option {short!r}: spell it out (--long-name)")
    return SHORT_OPTIONS[short] + (dot + rest.replace("-", "_") if dot else ""), given


def _set(engine: dict[str, Any], dotted: dict[str, dict[str, Any]], name: str, value: Any) -> None:
    head, dot, rest = name.partition(".")
    if not dot:
        engine[head] = value
        return
    where = dotted.setdefault(head, {})
    *parents, last = rest.split(".")
    for parent in parents:
        child = where.setdefault(parent, {})
        if not isinstance(child, dict):
            raise UsageError(f"vllm serve: -{head}.{parent} is given both as a value and by field")
        where = child
    where[last] = value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number_or_text(text: str, *, json_values: bool = False) -> Any:
    """A JSON number as a number (``8192``, ``0.5``); with ``json_values`` any JSON value (objects,
    lists, strings, true/false/null); anything else as the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return value if json_values else text


# --- against the target -------------------------------------------------------------------------


def contradictions(target: Target, command: ServeCommand) -> tuple[FactChange, ...]:
    """Where the command line says otherwise than the target: target value → command value, one
    per fact (``(absent)`` where one side does not set it)."""
    declared = {fact.name: fact.value for fact in f.engine_facts(target.engine)}
    running = {fact.name: fact.value for fact in f.engine_facts(command.engine)}
    changes = []
    if command.model != target.model:
        changes.append(FactChange(f.MODEL, target.model or ABSENT, command.model or ABSENT))
    if (command.revision or "main") != (target.revision or "main"):
        changes.append(FactChange(REVISION, target.revision or "main", command.revision or "main"))
    for name in sorted(declared.keys() | running.keys()):
        old, new = declared.get(name, ABSENT), running.get(name, ABSENT)
        if old != new or type(old) is not type(new):
            changes.append(FactChange(name, old, new))
    return tuple(changes)
