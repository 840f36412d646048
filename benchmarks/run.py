"""torchgraft vs torch.fx, side by side, in one run on this machine. Prints a Markdown table.

    python benchmarks/run.py           # the full run (a few minutes on 2 cores)
    python benchmarks/run.py --quick   # a short run: smaller models and sizes

Rows (ratio: torchgraft / torch.fx, lower is better for times):
- capture time vs ``torch.fx.symbolic_trace`` on torchvision models;
- swap-activation pass vs ``subgraph_rewriter.replace_pattern`` at 1,000 and 4,000 blocks;
- emitted model forward vs eager (resnet50, batch 8, one thread);
- fused model (fuse-conv-bn) forward vs fx ``fuse()``'s;
- meta-device capture + emit of a Llama-2-7B config (seconds, peak RSS).
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.fx.experimental.optimization

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import torchgraft  # noqa: E402


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def capture_rows(names: list[str]) -> list[tuple[str, float, float]]:
    """(model, torchgraft capture s, fx.symbolic_trace s)."""
    from zoo import import_torchvision

    tv = import_torchvision()
    rows = []
    for name in names:
        model = tv.models.get_model(name).eval()
        x = torch.randn(1, 3, 224, 224)
        ours = best(lambda m=model, x=x: torchgraft.capture(m, (x,)), 2)
        fx = best(lambda m=model: torch.fx.symbolic_trace(m), 2)
        rows.append((f"capture {name}", ours, fx))
    return rows


def pass_rows(sizes: list[int]) -> list[tuple[str, float, float]]:
    """(swap-activation at N blocks, torchgraft pass s, fx replace_pattern s)."""
    import passes_vs_fx

    rows = []
    for n in sizes:
        got = passes_vs_fx.measure(n, 1, check=False)
        rows.append((f"relu->silu, {n} blocks (pass)", got["pass"], got["fx"]))
        rows.append((f"relu->silu, {n} blocks (passes.run, verified)", got["run_untyped"], got["fx"]))
        rows.append((f"relu->silu, {n} blocks (passes.run, verified, retyped)", got["run"], got["fx"]))
    return rows


def forward_rows(quick: bool) -> list[tuple[str, float, float]]:
    """(emitted forward vs eager; fused forward vs fx fuse) on resnet50 or resnet18, one thread."""
    from zoo import import_torchvision

    tv = import_torchvision()
    name = "resnet18" if quick else "resnet50"
    model = tv.models.get_model(name).eval()
    x = torch.randn(8, 3, 224, 224)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ir_model = torchgraft.capture(model, (x[:2],))
        emitted = torchgraft.emit(ir_model).materialize().eval()
        fused = torchgraft.emit(torchgraft.passes.run(ir_model, "fuse-conv-bn").model).materialize().eval()
        fx_fused = torch.fx.experimental.optimization.fuse(copy.deepcopy(model))
        with torch.no_grad():
            run = lambda m: best(lambda: m(x), 3)  # noqa: E731
            eager, ours, ours_fused, fx_f = run(model), run(emitted), run(fused), run(fx_fused)
    finally:
        torch.set_num_threads(threads)
    return [(f"{name} forward, batch 8, 1 thread: emitted vs eager", ours, eager),
            (f"{name} forward: fuse-conv-bn vs fx fuse()", ours_fused, fx_f)]


def meta_row(quick: bool) -> list[tuple[str, float, float]]:
    """Meta-device Llama capture + emit, in a subprocess (its own peak RSS)."""
    import json
    import subprocess

    layers = "4" if quick else "32"
    code = ("import json, sys; sys.argv=['x','--layers'," + repr(layers) + "]; import meta_llama; "
            "print(json.dumps(meta_llama.main(sys.argv[1:])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "benchmarks",
                         check=True).stdout.strip().splitlines()[-1]
    got = json.loads(out)
    return [(f"meta Llama ({got['params_billion']:.1f}B) capture+emit s / peak RSS MB",
             got["capture_plus_emit_s"], got["peak_rss_mb"])]


def main(argv: list[str] | None = None) -> None:
    """Run every comparison and print the table."""
    parser = argparse.ArgumentParser(description="torchgraft vs torch.fx benchmarks")
    parser.add_argument("--quick", action="store_true", help="small models and sizes")
    args = parser.parse_args(argv)
    names = ["resnet18", "mobilenet_v3_small"] if args.quick else [
        "resnet50", "mobilenet_v3_large", "efficientnet_b0", "vit_b_16", "densenet121"]
    rows = capture_rows(names) + pass_rows([300] if args.quick else [1000, 4000])
    rows += forward_rows(args.quick) + meta_row(args.quick)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| comparison | torchgraft | torch.fx / reference | ratio |\n| --- | ---: | ---: | ---: |")
    for label, ours, theirs in rows:
        ratio = ours / theirs if theirs else float("nan")
        print(f"| {label} | {ours:.4f} | {theirs:.4f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
