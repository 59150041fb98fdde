"""The demo's workload: load a small model's weights from the HF cache and torch.compile it.

Run under ``cachekeeper run``, which points HF_HUB_CACHE and TORCHINDUCTOR_CACHE_DIR at the
right keys. Prints one line the demo reads: ``compile_seconds=... fxgraph_hits=... misses=...``.
"""

import os
import sys
import time

import torch
from huggingface_hub import snapshot_download

REPO = "cachekeeper-demo/tiny-mlp"


def build(width: int, depth: int) -> torch.nn.Module:
    blocks = [
        torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.LayerNorm(width))
        for _ in range(depth)
    ]
    return torch.nn.Sequential(*blocks)


def main() -> None:
    width, depth = int(os.environ.get("DEMO_WIDTH", "256")), int(os.environ.get("DEMO_DEPTH", "4"))
    model = build(width, depth)
    folder = snapshot_download(REPO, revision=os.environ.get("DEMO_REVISION", "main"), local_files_only=True)
    model.load_state_dict(torch.load(os.path.join(folder, "pytorch_model.bin"), weights_only=True))
    started = time.perf_counter()
    compiled = torch.compile(model)
    with torch.no_grad():
        compiled(torch.randn(8, width))
    seconds = time.perf_counter() - started
    from torch._dynamo.utils import counters

    hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
    print(f"compile_seconds={seconds:.2f} fxgraph_hits={hits} fxgraph_misses={misses}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
