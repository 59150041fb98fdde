"""GPU validation, one command: python bench/gpu_validate.py [--out DIR]

On a machine with an NVIDIA GPU (an H100 or H200 here) and torch + triton:
1. cachekeeper's fingerprint through NVML, checked against nvidia-smi and torch.cuda, and its cost;
2. a 12-block, d=1024, fp16 transformer torch.compile'd three times through `cachekeeper run`:
   cold (build and publish), warm (cache hit) and with a changed key (must not reuse anything).
Writes gpu_validation.json and gpu_validation.md to --out (default: the current directory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import cachekeeper  # noqa: E402
from cachekeeper.store import Root, measure, read_sidecar  # noqa: E402

ENGINE = {"width": 1024, "depth": 12, "heads": 16, "batch": 8, "sequence": 256}


def nvidia_smi() -> dict[str, str]:
    fields = "name,compute_cap,memory.total,driver_version"
    line = subprocess.run(
        ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[0]
    name, cap, memory, driver = (part.strip() for part in line.split(","))
    header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=True).stdout
    cuda = header.split("CUDA Version:")[1].split()[0]
    return {"name": name, "arch": "sm_" + cap.replace(".", ""), "memory_mib": memory, "driver": driver, "cuda": cuda}


def torch_view() -> dict[str, str]:
    script = (
        "import json, torch; p = torch.cuda.get_device_properties(0); c = torch.cuda.get_device_capability(0);"
        "print(json.dumps({'name': p.name, 'arch': f'sm_{c[0]}{c[1]}', 'memory_mib': p.total_memory // 2**20,"
        "'runtime': torch.version.cuda, 'torch': torch.__version__}))"
    )
    return json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)


def fingerprint_cost(repeats: int = 15) -> dict[str, float]:
    """Median seconds of observe() in-process, and of a fresh process importing cachekeeper and observing."""
    in_process = []
    for _ in range(repeats):
        started = time.perf_counter()
        cachekeeper.observe()
        in_process.append(time.perf_counter() - started)
    script = (
        "import time; t = time.perf_counter(); import cachekeeper; cachekeeper.observe(); "
        "print(time.perf_counter() - t)"
    )
    fresh = [
        float(
            subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=_env()
            ).stdout
        )
        for _ in range(5)
    ]
    return {"observe_median_s": statistics.median(in_process), "import_and_observe_median_s": statistics.median(fresh)}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}


def boot(root: Path, target: Path, extra_env: dict[str, str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cachekeeper",
            "--root",
            str(root),
            "run",
            "--target",
            str(target),
            "--json",
            "--",
            sys.executable,
            str(HERE / "gpu_model.py"),
            str(target),
        ],
        capture_output=True,
        text=True,
        env={**_env(), **extra_env},
    )
    if result.returncode != 0:
        raise SystemExit(f"boot failed:\n{result.stdout}\n{result.stderr}")
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    workload, summary = lines[0], lines[-1]
    compile_layer = next(layer for layer in summary["layers"] if layer["layer"] == "compile")
    return {
        **workload,
        "boot_wall_seconds": time.perf_counter() - started,
        "key": compile_layer["key"],
        "status": compile_layer["status"],
    }


def three_boots(extra_env: dict[str, str]) -> dict:
    """Cold, warm, then a changed key, in a fresh cache root."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        first = write_target(Path(scratch) / "cachekeeper.toml", ENGINE)
        cold, warm = boot(root, first, extra_env), boot(root, first, extra_env)
        published = read_sidecar(Root(root), "compile", cold["key"]) is not None
        before = measure(root / "compile" / cold["key"])
        changed = boot(root, write_target(Path(scratch) / "changed.toml", {**ENGINE, "batch": 16}), extra_env)
        untouched = before == measure(root / "compile" / cold["key"])
    return {"cold": cold, "warm": warm, "changed": changed, "published": published, "untouched": untouched}


def write_target(path: Path, engine: dict) -> Path:
    body = "\n".join(f"{name} = {value}" for name, value in engine.items())
    path.write_text(f'[target]\ngpu = "H100"\n\n[target.engine]\n{body}\n')
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.cwd())
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    facts = cachekeeper.observe()
    ours = {name: facts.value(f"gpu.{name}") for name in ("name", "arch", "memory_mib")}
    ours.update(
        driver=facts.value("driver.version"), cuda=facts.value("cuda.driver"), runtime=facts.value("cuda.runtime")
    )
    smi, torch_side = nvidia_smi(), torch_view()
    agreement = {
        "name (nvidia-smi)": ours["name"] == smi["name"],
        "name (torch)": ours["name"] == torch_side["name"],
        "arch (nvidia-smi)": ours["arch"] == smi["arch"],
        "arch (torch)": ours["arch"] == torch_side["arch"],
        "memory MiB (nvidia-smi)": str(ours["memory_mib"]) == smi["memory_mib"],
        "memory MiB (torch, ≤ NVML total)": 0 < torch_side["memory_mib"] <= ours["memory_mib"],
        "driver (nvidia-smi)": ours["driver"] == smi["driver"],
        "CUDA driver version (nvidia-smi)": ours["cuda"] == smi["cuda"],
        "CUDA runtime (torch.version.cuda)": ours["runtime"] == torch_side["runtime"],
    }
    cost = fingerprint_cost()
    from cachekeeper.runtime.environment import has_torch_bytecode

    image = {"torch bytecode in the image": has_torch_bytecode()}

    # vLLM sets TORCHINDUCTOR_COMPILE_THREADS=1 itself (vllm/env_override.py); torch's default
    # starts a pool of compile workers. Both are measured, each in a cache root of its own.
    configurations = {
        "torch default": {},
        "TORCHINDUCTOR_COMPILE_THREADS=1 (as vLLM)": {"TORCHINDUCTOR_COMPILE_THREADS": "1"},
    }
    runs = {name: three_boots(extra) for name, extra in configurations.items()}
    checks = {}
    for name, run in runs.items():
        cold, warm, changed = run["cold"], run["warm"], run["changed"]
        checks.update(
            {
                f"{name}: cold boot built and published": cold["status"] == "build" and run["published"],
                f"{name}: warm boot was a cache hit": warm["status"] == "hit"
                and warm["key"] == cold["key"]
                and warm["fxgraph_hits"] >= 1,
                f"{name}: changed key got its own directory": changed["key"] != cold["key"]
                and changed["inductor_dir"] != cold["inductor_dir"],
                f"{name}: changed boot reused nothing": changed["status"] == "build" and changed["fxgraph_hits"] == 0,
                f"{name}: old artifact untouched by the changed boot": run["untouched"],
                f"{name}: warm compile ≤ 25% of cold": warm["compile_seconds"] <= 0.25 * cold["compile_seconds"],
            }
        )
    keys = cachekeeper.observe(engine=ENGINE)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": smi,
        "torch": torch_side,
        "fingerprint": ours,
        "agreement": agreement,
        "fingerprint_cost": cost,
        "image": image,
        "engine": ENGINE,
        "runs": runs,
        "checks": checks,
        "facts_sample": {f.name: f.value for f in keys if f.name.startswith(("gpu.", "driver.", "cuda."))},
    }
    (out / "gpu_validation.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_validation.md").write_text(markdown(report))
    print(markdown(report))
    if not all(agreement.values()) or not all(checks.values()):
        sys.exit(1)


def markdown(report: dict) -> str:
    lines = [
        f"GPU: {report['device']['name']}, driver {report['device']['driver']}, CUDA {report['device']['cuda']}, "
        f"torch {report['torch']['torch']} ({report['date']})",
        "",
        "| check | result |",
        "|---|---|",
    ]
    lines += [
        f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in {**report["agreement"], **report["checks"]}.items()
    ]
    cost = report["fingerprint_cost"]
    lines += [
        "",
        "torch bytecode in the image: "
        + ("yes" if report["image"]["torch bytecode in the image"] else "no (kept in the compile artifact)"),
    ]
    lines += [
        "",
        f"observe(): {cost['observe_median_s'] * 1000:.1f} ms median in-process; "
        f"{cost['import_and_observe_median_s'] * 1000:.1f} ms with the import, in a fresh process",
        "",
    ]
    for name, run in report["runs"].items():
        lines += [
            f"**{name}**",
            "",
            "| boot | key status | compile + first forward (s) | whole boot (s) | fxgraph hits / misses |",
            "|---|---|---|---|---|",
        ]
        for boot_name in ("cold", "warm", "changed"):
            result = run[boot_name]
            lines.append(
                f"| {boot_name} | {result['status']} | {result['compile_seconds']:.2f} "
                f"| {result['boot_wall_seconds']:.2f} "
                f"| {result['fxgraph_hits']} / {result['fxgraph_misses']} |"
            )
        ratio = run["warm"]["compile_seconds"] / run["cold"]["compile_seconds"]
        phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in list(run["warm"]["phases"].items())[:5])
        lines += ["", f"warm / cold: {ratio:.1%} (target ≤ 25%). Warm phases: {phases}", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
