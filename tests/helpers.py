"""Builders for real on-disk state the tests need: artifacts in a root and its manifest, Hugging
Face caches, facts, CLI runs. Shared by the test modules, none of which imports another."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cachekeeper.cache import Cache
from cachekeeper.facts import Facts, Source
from cachekeeper.processes import ProcessIdentity, this_process
from cachekeeper.store import Artifact, Root, Roots, publish, scan_contents

REPO_ROOT = Path(__file__).resolve().parent.parent

# One day in seconds, for ages and --older-than policies.
DAY = 86400.0

# The torch installed here: a target that declares it matches this machine.
TORCH = importlib.metadata.version("torch")

# A realistic H100 boot's facts; tests change one at a time.
H100_FACTS: dict[str, Any] = {
    "gpu.type": "H100",
    "gpu.name": "NVIDIA H100 80GB HBM3",
    "gpu.arch": "sm_90",
    "gpu.memory_mib": 81559,
    "gpu.count": 1,
    "driver.version": "580.159.04",
    "driver.branch": "580",
    "cuda.driver": "13.0",
    "cuda.runtime": "12.8",
    "python": "3.12.7",
    "torch": "2.9.0",
    "triton": "3.5.0",
    "vllm": "0.33.0",
    "flashinfer": "0.7.2",
    "model": "Qwen/Qwen2.5-0.5B-Instruct",
    "model.revision": "a" * 40,
    "image": "v1",
    "engine.max_model_len": 4096,
    "engine.port": 8000,
    "engine.compilation_config.cudagraph_capture_sizes": (1, 2, 4),
    "env.VLLM_USE_V1": "1",
}


def facts(**overrides: Any) -> Facts:
    """H100_FACTS with overrides; pass the name with dots replaced by double underscores. Nothing
    on disk: the facts a boot would observe."""
    values = dict(H100_FACTS)
    for name, value in overrides.items():
        values[name.replace("__", ".")] = value
    return Facts.from_values(values, Source.OBSERVED)


def artifact(key: str = "compile-sm90-0123456789abcdef", **changes) -> Artifact:
    """An artifact record for ``key`` (layer and relpath follow from it), created and last used now;
    ``changes`` override any field. Nothing is written: publish it, or record it in a manifest."""
    now = time.time()
    fields = dict(
        key=key,
        layer=key.split("-")[0],
        model="org/m",
        relpath=f"{key.split('-')[0]}/{key}",
        bytes=10,
        files=1,
        created_at=now,
        last_used_at=now,
        builder="host:1",
        facts={"gpu.arch": "sm_90", "sizes": (1, 2)},
    )
    fields.update(changes)
    return Artifact(**fields)


def put(root, manifest, key, *, age_days, layer=None, model="org/m", size=10, depends_on=()):
    """A published artifact of ``size`` bytes last used ``age_days`` ago, in the manifest too.

    On disk: ``root/<layer>/<key>/data`` holding ``size`` bytes of ``x``, its checksums and its
    sidecar, published as a boot would; in ``manifest`` its row. Returns the record."""
    layer = layer or key.split("-")[0]
    then = time.time() - age_days * DAY
    directory = root / layer / key
    directory.mkdir(parents=True)
    (directory / "data").write_bytes(b"x" * size)
    contents = scan_contents(directory)
    record = artifact(
        key,
        layer=layer,
        model=model,
        relpath=f"{layer}/{key}",
        created_at=then,
        last_used_at=then,
        bytes=size,
        depends_on=tuple(depends_on),
        checksum=contents.checksum,
    )
    publish(Root(root), record, contents)
    manifest.record_artifact(record)
    return record


def make_hf_model(
    cache: Path, repo_id: str, files: dict[str, bytes], *, revision: str = "main", sha: str | None = None
) -> str:
    """Lay out a model the way huggingface_hub does under ``cache``: blobs by content, snapshot
    links to them, and a ref naming the snapshot. Returns the snapshot's sha."""
    sha = sha or hashlib.sha1(repo_id.encode() + json.dumps(sorted(files)).encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    snapshot = repo / "snapshots" / sha
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return sha


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300):
    """Run the real ``cachekeeper`` command in a subprocess; it writes whatever that command writes."""
    return subprocess.run(
        [sys.executable, "-m", "cachekeeper", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its size: a snapshot to prove nothing was touched (it reads,
    writes nothing)."""
    return {
        str(p.relative_to(path)): p.lstat().st_size for p in sorted(path.rglob("*")) if not p.is_dir() or p.is_symlink()
    }


def write_target(path: Path, body: str) -> Path:
    """A target file at ``path`` holding ``body`` (TOML); returns the path."""
    path.write_text(body)
    return path


def folded(root: Path, manifest: Any) -> Cache:
    """The cache at ``root`` on ``manifest``, with what boots recorded folded in, as commands open it."""
    cache = Cache(Roots.at(root), manifest)
    cache.fold()
    return cache


# --- a server: a real process that boots on a root and keeps using what it booted on ----------

_SERVER = r"""
import json, os, pathlib, signal, socket, sys, time

root, layers, offset, renew, lease_ttl, db = sys.argv[1:7]
if float(offset):  # this process's clock runs ahead or behind the machine's
    _real = time.time
    time.time = lambda: _real() + float(offset)
import cachekeeper
from cachekeeper import uses
from cachekeeper.processes import this_process
from cachekeeper.store import Root, read_sidecar

if float(renew):
    uses._RENEW_EVERY = float(renew)  # how often it shows it lives: a test cannot wait minutes
leases = None
if db != "-":
    from cachekeeper.leases import DbLeases
    from cachekeeper.manifest import Manifest

    leases = DbLeases(Manifest.open(db), float(lease_ttl) or 60.0)
booting = cachekeeper.activate(
    pathlib.Path(root), layers=layers.split(","), lease_ttl=float(lease_ttl) or None, leases=leases, on_busy="cold"
)
ck = booting.__enter__()
written = {}


def say(**fields):
    print(json.dumps(fields), flush=True)


say(
    event="entered",
    layers={n: {"status": u.status, "key": str(u.key), "path": str(u.path)} for n, u in ck.layers.items()},
    pid=os.getpid(),
    host=socket.gethostname(),
    process=str(this_process()),
)
for line in sys.stdin:
    command, *args = line.split()
    if command == "write":  # write part N into every layer it builds
        for use in ck.layers.values():
            if use.status == "build":
                path = use.path / f"part-{args[0]}"
                path.write_bytes(f"{use.key}:{args[0]}\n".encode() * 100)
                written[str(path)] = path.read_bytes()
        say(event="wrote")
    elif command == "check":  # every file it wrote or found is still there, unchanged
        missing = [p for p, content in written.items() if not os.path.exists(p) or open(p, "rb").read() != content]
        say(event="checked", missing=missing)
    elif command == "read":  # what a hit found: remember it, to check later
        for use in ck.layers.values():
            for path in sorted(use.path.rglob("*")):
                if path.is_file():
                    written[str(path)] = path.read_bytes()
        say(event="read", files=len(written))
    elif command == "finish":  # leave the block: publish what was built
        booting.__exit__(None, None, None)
        published = {name: read_sidecar(Root(pathlib.Path(root)), name, str(use.key)) is not None
                     for name, use in ck.layers.items()}
        say(event="finished", published=published)
    elif command == "exit":
        say(event="exiting")
        break
"""


class Server:
    """A real process that ``activate()``s layers of a root and goes on using them, driven line by
    line: ``write N``, ``read``, ``check``, ``finish`` (leave the block, publishing), ``exit``.

    ``prefix`` runs it under another command (``unshare --pid ...``); ``offset`` skews its clock by
    that many seconds; ``renew`` makes it renew its uses that often; ``lease_ttl`` is its leases'
    TTL; ``db`` gives it leases in that manifest database."""

    def __init__(
        self,
        root: Path,
        *,
        layers: str = "compile",
        prefix: tuple[str, ...] = (),
        offset: float = 0.0,
        renew: float = 0.0,
        lease_ttl: float = 0.0,
        db: str | None = None,
    ) -> None:
        arguments = [str(root), layers, str(offset), str(renew), str(lease_ttl), db or "-"]
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-c", _SERVER, *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        self.entered = self._answer()

    def status(self, layer: str = "compile") -> str:
        return str(self.entered["layers"][layer]["status"])

    def key(self, layer: str = "compile") -> str:
        return str(self.entered["layers"][layer]["key"])

    def path(self, layer: str = "compile") -> Path:
        return Path(self.entered["layers"][layer]["path"])

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the server ended (exit code {self.process.poll()})"
        return json.loads(line)

    def stop(self) -> None:
        """Exit as a server does: its uses are released."""
        if self.process.poll() is None:
            try:
                self.ask("exit")
                self.process.wait(timeout=30)  # its uses are released on its way out
            except (AssertionError, BrokenPipeError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def exited_process(token: str = "exited") -> ProcessIdentity:
    """This host's identity of a process that has exited: proven gone."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return this_process()._replace(pid=process.pid, token=token)
