"""torch.compile with its caches under cachekeeper's key, in any Python process: no Modal needed.

    python examples/torch_compile.py --root /tmp/ck     # first run builds, the second hits

The compile layer's key is made of this machine's GPU, driver, CUDA, Python, torch and Triton
and of the model's shape (passed as engine arguments), so a change to any of them compiles
afresh in a directory of its own instead of reusing kernels built for something else.
"""

from __future__ import annotations

import argparse
import time

import torch

import cachekeeper

WIDTH, DEPTH = 64, 2


def build(width: int, depth: int) -> torch.nn.Module:
    layers = [torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU()) for _ in range(depth)]
    return torch.nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the cache root")
    root = parser.parse_args().root
    with cachekeeper.activate(root, layers=["compile"], engine={"width": WIDTH, "depth": DEPTH}) as ck:
        started = time.perf_counter()
        compiled = torch.compile(build(WIDTH, DEPTH))
        with torch.no_grad():
            compiled(torch.randn(4, WIDTH))
        seconds = time.perf_counter() - started
    use = ck.layers["compile"]
    print(f"compile {use.status} in {seconds:.1f} s under {use.key}")


if __name__ == "__main__":
    main()
