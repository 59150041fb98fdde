"""cachekeeper end to end on this machine: no GPU, no network.

1. A small model is put in a real Hugging Face cache layout under the demo's cache root.
2. ``cachekeeper run`` boots it twice: cold (torch.compile builds, cachekeeper publishes) and warm
   (the compile cache is a hit).
3. A target with a newer torch is checked: the compile layer is stale, and explain says why.
4. ``prune`` previews, then removes, what has not been used.

Usage: python examples/demo.py [--root DIR]   (default: .demo/ beside this repository)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = "cachekeeper-demo/tiny-mlp"
TORCH = importlib.metadata.version("torch")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def cachekeeper(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    print(f"$ cachekeeper {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "cachekeeper", *args], text=True, capture_output=capture, env=os.environ.copy()
    )
    if capture:
        sys.stdout.write(result.stderr)  # cachekeeper's own lines come before the command's output
        sys.stdout.write(result.stdout)
    if check and result.returncode not in (0, 1):
        raise SystemExit(f"cachekeeper {args[0]} failed with exit code {result.returncode}")
    return result


def put_model_in_hf_cache(hub: Path) -> str:
    """Write the tiny model the way huggingface_hub lays out a download: blobs, snapshot, ref."""
    sys.path.insert(0, str(HERE))
    from demo_model import build

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(build(256, 4).state_dict(), buffer)
    files = {"config.json": b'{"width": 256, "depth": 4}', "pytorch_model.bin": buffer.getvalue()}
    sha = hashlib.sha1(b"".join(files.values())).hexdigest()
    repo = hub / ("models--" + REPO.replace("/", "--"))
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = repo / "snapshots" / sha / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return sha


def target(path: Path, torch_version: str) -> Path:
    path.write_text(
        f'[target]\ngpu = "cpu"\nmodel = "{REPO}"\nrevision = "main"\n\n'
        f'[target.packages]\ntorch = "{torch_version}"\n\n'
        "[target.engine]\nwidth = 256\ndepth = 4\n"
    )
    return path


def boot(label: str, target_file: Path) -> float:
    say(f"{label} boot: cachekeeper run -- python demo_model.py")
    result = cachekeeper(
        "run", "--target", str(target_file), "--", sys.executable, str(HERE / "demo_model.py"), capture=True
    )
    if result.returncode != 0:
        raise SystemExit(f"the {label} boot failed")
    match = re.search(r"compile_seconds=([\d.]+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parent / ".demo")
    demo = parser.parse_args().root.resolve()
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir(parents=True)
    os.environ.update(CACHEKEEPER_ROOT=str(demo / "cache"), HF_HUB_OFFLINE="1")

    say("A new cache root (the first boot would make it one too)")
    cachekeeper("init")

    say(f"A model in a real Hugging Face cache under {demo / 'cache' / 'weights'}")
    sha = put_model_in_hf_cache(demo / "cache" / "weights")
    print(f"{REPO} main → {sha}")
    current = target(demo / "cachekeeper.toml", TORCH)
    print(current.read_text())

    say("This machine's fingerprint and keys")
    cachekeeper("fingerprint", "--target", str(current))

    say("Before the first boot the deploy is cold")
    cachekeeper("check", "--target", str(current))

    cold = boot("Cold", current)
    warm = boot("Warm", current)
    say(f"torch.compile took {cold:.1f} s cold and {warm:.1f} s warm: {cold / warm:.1f}× faster")

    say("The same deploy now checks warm (exit 0: a CI gate would pass)")
    cachekeeper("check", "--target", str(current))

    say("A deploy that upgrades torch would find its compile cache stale, and says why")
    upgraded = target(demo / "cachekeeper-upgrade.toml", "2.14.1")
    cachekeeper("check", "--target", str(upgraded))

    say("What the cache holds")
    cachekeeper("ls")

    time.sleep(2)
    say("Prune what has not been used for a second: preview, then for real")
    cachekeeper("prune", "--older-than", "1s", "--dry-run")
    cachekeeper("prune", "--older-than", "1s", "--yes")
    cachekeeper("ls")
    say(f"Done. Everything the demo made is under {demo}")


if __name__ == "__main__":
    main()
