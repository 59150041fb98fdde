"""A transformer-sized torch.compile workload for the GPU benchmark, booted under `cachekeeper run`.

Reads the model's shape from the target file's [target.engine] table, so that changing it there
changes both the cache key and the compiled code. Prints one JSON line with its timings.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib

import torch


class Block(torch.nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def main() -> None:
    engine = tomllib.loads(open(sys.argv[1]).read())["target"]["engine"]
    width, depth, heads = engine["width"], engine["depth"], engine["heads"]
    batch, sequence = engine["batch"], engine["sequence"]
    started = time.perf_counter()
    model = torch.nn.Sequential(*[Block(width, heads) for _ in range(depth)]).cuda().half().eval()
    x = torch.randn(batch, sequence, width, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        model(x)  # CUDA context, cuBLAS and attention kernels are ready before the clock starts
    torch.cuda.synchronize()
    built = time.perf_counter()
    profiler = _profiler()
    compiled = torch.compile(model)
    with torch.no_grad():
        compiled(x)
    torch.cuda.synchronize()
    compiled_at = time.perf_counter()
    hot_spots = _hot_spots(profiler) if profiler else None
    from torch._dynamo.utils import compile_times, counters

    print(
        json.dumps(
            {
                "compile_seconds": compiled_at - built,
                "setup_seconds": built - started,
                "fxgraph_hits": counters["inductor"]["fxgraph_cache_hit"],
                "fxgraph_misses": counters["inductor"]["fxgraph_cache_miss"],
                "inductor_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                "triton_dir": os.environ.get("TRITON_CACHE_DIR"),
                "phases": _phases(compile_times(repr="csv", aggregate=True)),
                **({"hot_spots": hot_spots} if hot_spots else {}),
            }
        ),
        flush=True,
    )


def _profiler():
    """With BENCH_PROFILE=1, a running cProfile profiler for the compile; else None."""
    if os.environ.get("BENCH_PROFILE") != "1":
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _hot_spots(profiler) -> list[str]:
    import io
    import pstats

    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(40)
    return [line.strip() for line in stream.getvalue().splitlines() if line.strip()][-40:]


def _phases(table: tuple[list[str], list[object]]) -> dict[str, float]:
    """Seconds per torch.compile phase, the largest first."""
    names, values = table
    phases = {
        name: float(value)
        for name, value in zip(names, values, strict=False)
        if isinstance(value, (int, float, str)) and _number(value)
    }
    return dict(sorted(phases.items(), key=lambda item: -item[1])[:8])


def _number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


if __name__ == "__main__":
    main()
