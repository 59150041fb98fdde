"""Where everything lives under a cache root. Every path under a root is made here, and nowhere else.

Paths are made only from validated names (a layer, a key, a repo id, a commit sha, a checksum, a
host): whatever a sidecar, a manifest row, a journal line or a file name says, it is checked here
before it becomes part of a path, and refused (``UnsafePath``) when it is not a plain name of its
kind.

::

    <root>/weights/                        HF_HUB_CACHE (huggingface_hub's own revision-addressed layout)
    <root>/<layer>/<key>/                  an artifact: VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR, ... inside
    <root>/.cachekeeper/manifest.db        the SQLite manifest (the default)
    <root>/.cachekeeper/sidecars/<layer>/<key>.json             what makes an artifact exist
    <root>/.cachekeeper/checksums/<layer>/<key>.<digest>.json   its files' checksums at publish
    <root>/.cachekeeper/journal/[folded/]<writer>.jsonl         what each process recorded
    <root>/.cachekeeper/uses/<layer>/<key>/<process>.json       who uses an artifact now
    <root>/.cachekeeper/leases/<layer>/<key>/<generation>.lease who builds it
    <root>/.cachekeeper/strikes/<layer>/<key>/{attempt,strike}-<uid>.json   boots on it, and those that failed
    <root>/.cachekeeper/quarantine/<layer>/<key>--<stamp>[.json]  an artifact moved out of its key's way
    <root>/.cachekeeper/canaries/<layer>/<key>.json             the canary digest its builder computed
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import string
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..errors import CachekeeperError, UnsafePath, UnsafeRoot
from ..facts import hf_repo_folder, is_commit_sha, is_hex, is_repo_id, replace_runs
from ..keys import is_layer_name, parse_key
from ..layers import WEIGHTS
from ..values import Value
from .atomic import write_atomically

STATE_DIR = ".cachekeeper"
MARKER = "root.json"  # written when cachekeeper makes a directory a cache root
SIDECARS = "sidecars"
CHECKSUMS = "checksums"
JOURNAL = "journal"
FOLDED = "folded"
USES = "uses"
LEASES = "leases"
STRIKES = "strikes"
QUARANTINE = "quarantine"
CANARIES = "canaries"
# Directories of the state directory that hold one subdirectory per layer.
PER_LAYER_STATE = (SIDECARS, CHECKSUMS, USES, LEASES, STRIKES, QUARANTINE, CANARIES)


_IN_HOST = frozenset(string.ascii_letters + string.digits + ".-")
# A quarantined artifact's name: its key, then when (milliseconds) and a random part.
_QUARANTINE_STAMP = r"(?P<key>.+)--[0-9]{13}-[0-9a-f]{8}"


def layer_name(layer: str) -> str:
    if not isinstance(layer, str) or not is_layer_name(layer):
        raise UnsafePath(f"refusing the layer name {layer!r}: not a layer name")
    return layer


def key_name(layer: str, key: str) -> str:
    """``key`` if it is a cache key of ``layer``."""
    try:
        key_layer, _ = parse_key(key)
    except CachekeeperError:
        raise UnsafePath(f"refusing the key {key!r}: not a cache key") from None
    if key_layer != layer:  # a key's own layer part is a valid layer name
        raise UnsafePath(f"refusing the key {key!r}: not a key of the {layer!r} layer")
    return key


def checksum_name(checksum: str) -> str:
    if not isinstance(checksum, str) or not is_hex(checksum, 32):
        raise UnsafePath(f"refusing the checksum {checksum!r}: not an xxh3-128 digest")
    return checksum


def strike_file_name(name: str) -> str:
    """``attempt-<uid>.json`` or ``strike-<uid>.json``."""
    kind, _, rest = name.partition("-") if isinstance(name, str) else ("", "", "")
    if kind not in ("attempt", "strike") or not rest.endswith(".json") or not is_hex(rest[: -len(".json")], 32):
        raise UnsafePath(f"refusing the strike record name {name!r}: not one cachekeeper writes")
    return name


def quarantine_name(layer: str, name: str) -> str:
    """``<key>--<milliseconds>-<random>``, for a key of ``layer``: a quarantined artifact's name."""
    found = re.fullmatch(_QUARANTINE_STAMP, name) if isinstance(name, str) else None
    if found is None:
        raise UnsafePath(f"refusing the quarantined name {name!r}: not one cachekeeper makes")
    key_name(layer, found.group("key"))
    return name


def quarantined_key(name: str) -> str | None:
    """The key a quarantined name was made from, or None when it is no such name."""
    found = re.fullmatch(_QUARANTINE_STAMP, name)
    return found.group("key") if found else None


def repo_folder(model: str) -> str:
    """``models--org--name``, for a repo id such as ``org/name``."""
    if not isinstance(model, str) or not is_repo_id(model) or ".." in model:
        raise UnsafePath(f"refusing the model {model!r}: not a Hugging Face repo id")
    return hf_repo_folder(model)


def sha_name(sha: str) -> str:
    if not isinstance(sha, str) or not is_commit_sha(sha):
        raise UnsafePath(f"refusing the revision {sha!r}: not a commit sha")
    return sha


def host_name() -> str:
    """This host's name as a file name: letters, digits, dots and dashes only, at most 64 of them."""
    return replace_runs(socket.gethostname(), _IN_HOST, "_")[:64].strip(".") or "host"


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get("CACHEKEEPER_ROOT"):
        return Path(environ["CACHEKEEPER_ROOT"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cachekeeper"))


def builder_id() -> str:
    """Who is writing: host and process, as recorded in sidecars, journals and leases."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Root(Value):
    """One cache root: a directory, usually a Volume mount, holding one or more layers."""

    path: Path

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "manifest.db"

    @property
    def marker_path(self) -> Path:
        return self.state_dir / MARKER

    def marked(self) -> bool:
        """Whether cachekeeper made this root (its marker is a file of its own, not a link)."""
        try:
            return stat.S_ISREG(os.lstat(self.marker_path).st_mode) and not os.path.islink(self.state_dir)
        except OSError:
            return False

    def initialise(self) -> bool:
        """Make this directory a cache root (mark it), unless it is one already; True if marked now.
        ``/``, a home directory and the directories above one are refused."""
        refuse_location(self.path)
        if self.marked():
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        marker = json.dumps({"format": 1, "made_by": "cachekeeper", "at": time.time()}).encode()
        return write_atomically(self.marker_path, marker, exclusive=True)

    def open_for(self, doing: str) -> None:
        """Before a command uses this root: a missing or empty directory becomes a new root, one
        cachekeeper made is used as it is, anything else is refused (and left as it is)."""
        refuse_location(self.path)
        if self.marked():
            return
        if not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir())):
            self.initialise()
            return
        self.require_marked(doing)

    def require_marked(self, doing: str) -> None:
        """Refuse to ``doing`` (remove, replace) in a directory cachekeeper did not make a root."""
        refuse_location(self.path)
        if not self.marked():
            raise UnsafeRoot(
                f"refusing to {doing} {self.path}: it is not a cache root (no {STATE_DIR}/{MARKER}); "
                f"if it is one made by an older cachekeeper, mark it with `cachekeeper --root {self.path} init`"
            )

    @property
    def journal_dir(self) -> Path:
        return self.state_dir / JOURNAL

    @property
    def folded_dir(self) -> Path:
        return self.journal_dir / FOLDED

    def layer_dir(self, layer: str) -> Path:
        return self.path / layer_name(layer)

    def artifact_parts(self, layer: str, key: str) -> tuple[str, str]:
        """The artifact directory of ``key``, as names below the root."""
        return layer_name(layer), key_name(layer, key)

    def artifact_dir(self, layer: str, key: str) -> Path:
        return self.path.joinpath(*self.artifact_parts(layer, key))

    def hub_snapshot_parts(self, model: str, sha: str) -> tuple[str, ...]:
        """The Hub snapshot of ``model`` at commit ``sha`` in the weights layer, as names."""
        return WEIGHTS, repo_folder(model), "snapshots", sha_name(sha)

    def hub_snapshot(self, model: str, sha: str) -> Path:
        return self.path.joinpath(*self.hub_snapshot_parts(model, sha))

    def state_layer_dir(self, kind: str, layer: str) -> Path:
        """``.cachekeeper/<kind>/<layer>``, for one of PER_LAYER_STATE."""
        return self.state_dir / kind / layer_name(layer)

    def sidecar_path(self, layer: str, key: str) -> Path:
        return self.state_layer_dir(SIDECARS, layer) / f"{key_name(layer, key)}.json"

    def checksums_path(self, layer: str, key: str, checksum: str) -> Path:
        return self.state_layer_dir(CHECKSUMS, layer) / f"{key_name(layer, key)}.{checksum_name(checksum)}.json"

    def uses_dir(self, layer: str, key: str) -> Path:
        return self.state_layer_dir(USES, layer) / key_name(layer, key)

    def lease_dir(self, layer: str, key: str) -> Path:
        return self.leases_dir() / layer_name(layer) / key_name(layer, key)

    def leases_dir(self) -> Path:
        return self.state_dir / LEASES

    def strikes_dir(self, layer: str, key: str) -> Path:
        """Where boots of ``key`` leave their attempts and the strikes of those that failed."""
        return self.state_layer_dir(STRIKES, layer) / key_name(layer, key)

    def strike_path(self, layer: str, key: str, name: str) -> Path:
        return self.strikes_dir(layer, key) / strike_file_name(name)

    def quarantine_parts(self, layer: str, name: str) -> tuple[str, ...]:
        """A quarantined artifact's directory, as names below the root."""
        return STATE_DIR, QUARANTINE, layer_name(layer), quarantine_name(layer, name)

    def quarantine_record_path(self, layer: str, name: str) -> Path:
        """What was quarantined, why and when: beside the quarantined directory."""
        return self.state_layer_dir(QUARANTINE, layer) / f"{quarantine_name(layer, name)}.json"

    def canary_path(self, layer: str, key: str) -> Path:
        return self.state_layer_dir(CANARIES, layer) / f"{key_name(layer, key)}.json"

    def state_layers(self, kind: str) -> Iterator[tuple[str, Path]]:
        """(layer, directory) of every real (not linked) layer directory under ``.cachekeeper/<kind>``."""
        base = self.state_dir / kind
        try:
            entries = sorted(os.scandir(base), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield entry.name, Path(entry.path)

    def keys_with(self, kind: str) -> Iterator[tuple[str, str]]:
        """(layer, key) of every key with a directory under ``.cachekeeper/<kind>/<layer>/`` (its
        uses, its leases): one listing per layer, instead of one look per key."""
        for layer, directory in self.state_layers(kind):
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            yield from ((layer, entry.name) for entry in entries if entry.is_dir(follow_symlinks=False))


def refuse_location(path: Path) -> None:
    """A cache root is a directory of its own: never ``/``, a home directory, or one above a home."""
    resolved = path.expanduser().resolve()
    homes = {Path.home().resolve()}
    if os.environ.get("HOME"):
        homes.add(Path(os.environ["HOME"]).resolve())
    if resolved == Path(resolved.anchor) or any(resolved == home or resolved in home.parents for home in homes):
        raise UnsafeRoot(
            f"refusing {path} as a cache root: it is / or a home directory (or above one); "
            "choose a directory of its own"
        )


def check_state(root: Root) -> None:
    """Refuse a root whose state directory, or a directory in it, is a symbolic link: sidecars,
    journals, uses and leases are written and removed there, and must never be somewhere else."""
    state = root.state_dir
    parts = [state, root.journal_dir, root.folded_dir, root.manifest_path, *(state / name for name in PER_LAYER_STATE)]
    linked = [path for path in parts if path.is_symlink()]
    if not linked:
        for name in PER_LAYER_STATE:
            try:
                with os.scandir(state / name) as entries:
                    linked.extend(Path(entry.path) for entry in entries if entry.is_symlink())
            except (FileNotFoundError, NotADirectoryError):
                continue
    if linked:
        raise UnsafePath(
            f"refusing the cache root {root.path}: {linked[0]} is a symbolic link, and cachekeeper "
            "keeps its state inside the root (remove the link)"
        )


class Roots(Value):
    """The main root (manifest, journals) and any layer kept on a root of its own."""

    main: Root
    per_layer: Mapping[str, Root] = {}  # never changed in place

    @classmethod
    def at(cls, main: Path, per_layer: Mapping[str, Path] | None = None) -> Roots:
        return cls(Root(main), {layer: Root(path) for layer, path in (per_layer or {}).items()})

    def for_layer(self, layer: str) -> Root:
        return self.per_layer.get(layer, self.main)

    def hf_cache(self) -> Path:
        """The weights layer's directory: a Hugging Face cache (HF_HUB_CACHE)."""
        return self.for_layer(WEIGHTS).layer_dir(WEIGHTS)

    def all(self) -> list[Root]:
        seen: dict[Path, Root] = {self.main.path: self.main}
        for root in self.per_layer.values():
            seen.setdefault(root.path, root)
        return list(seen.values())
