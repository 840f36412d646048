"""torchgraft vs torch.fx, side by side, in one run on this machine. Prints a Markdown table.

    python benchmarks/run.py           # the full run (a few minutes on 2 cores)
    python benchmarks/run.py --quick   # a short run: smaller models and sizes
    python benchmarks/run.py --only forward,llama   # just some sections (capture, passes, forward, llama, meta)
    python benchmarks/run.py --only capture,forward,llama --cpu-time   # by thread CPU time (loaded machine)

Rows (ratio: torchgraft / torch.fx, lower is better for times):
- capture time vs ``torch.fx.symbolic_trace`` on torchvision models (batch 2, one thread; target <= 1.5x);
- swap-activation pass vs ``subgraph_rewriter.replace_pattern`` at 1,000 and 4,000 blocks (target for
  ``passes.run`` as a user calls it, retyped and verified, at 4,000 blocks: <= 0.05x, i.e. 20x faster than fx);
- emitted model forward vs eager, run-time guards included (resnet50, batch 8, one thread), best and median;
- fused model (fuse-conv-bn) forward vs fx ``fuse()``'s;
- emitted forward vs eager of a tiny transformers Llama (4 layers, hidden 64, padded attention mask,
  one thread), guards included, best and median;
- meta-device capture + emit of a Llama-2-7B config (seconds, peak RSS).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
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


def paired(fns: dict[str, Callable[[], Any]], repeat: int, number: int = 1, warmup: int = 2,
           clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each function: ``repeat`` samples of ``number`` calls each, after ``warmup``
    calls. The functions are interleaved, in reversed order every other round, so machine noise and
    drift hit all of them alike. ``clock`` is wall time by default; ``time.thread_time`` (this
    thread's CPU time) leaves out time the thread waited for a core, steadier on a loaded machine."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = fns[name]
            t = clock()
            for _ in range(number):
                fn()
            times[name].append((clock() - t) / number)
    return times


def capture_rows(names: list[str], repeat: int = 3, cpu_time: bool = False) -> list[tuple[str, float, float]]:
    """(model, torchgraft capture s, fx.symbolic_trace s): batch 2, one thread, interleaved, best of
    ``repeat`` (issue 11's target: capture within 1.5x of ``fx.symbolic_trace``); by thread CPU time
    with ``cpu_time``."""
    from zoo import import_torchvision

    tv = import_torchvision()
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in names:
            model = tv.models.get_model(name).eval()
            x = torch.randn(2, 3, 224, 224)
            t = paired({"ours": lambda m=model, x=x: torchgraft.capture(m, (x,)),
                        "fx": lambda m=model: torch.fx.symbolic_trace(m)}, repeat, warmup=1,
                       clock=time.thread_time if cpu_time else time.perf_counter)
            rows.append((f"capture {name}, batch 2, 1 thread{', CPU s' if cpu_time else ''}, best of {repeat} "
                         "(target <= 1.5x)",
                         min(t["ours"]), min(t["fx"])))
    finally:
        torch.set_num_threads(threads)
    return rows


def pass_rows(sizes: list[int], cpu_time: bool = False) -> list[tuple[str, float, float]]:
    """(swap-activation at N blocks, torchgraft pass s, fx replace_pattern s), each the best of 3 runs; by thread
    CPU time with ``cpu_time``."""
    import passes_vs_fx

    rows = []
    for n in sizes:
        got = passes_vs_fx.measure(n, 3, check=False,  # best of 3: the machine is shared
                                   clock=time.thread_time if cpu_time else time.perf_counter)
        cpu = ", CPU s" if cpu_time else ""
        rows.append((f"relu->silu, {n} blocks{cpu} (pass)", got["pass"], got["fx"]))
        rows.append((f"relu->silu, {n} blocks{cpu} (passes.run, verified)", got["run_untyped"], got["fx"]))
        target = " (target <= 0.05x: 20x faster)" if n >= 4000 else ""
        rows.append((f"relu->silu, {n} blocks{cpu} (passes.run, retyped)", got["run"], got["fx"]))
        rows.append((f"relu->silu, {n} blocks{cpu} (passes.run, retyped, verified){target}", got["run_full"],
                     got["fx"]))
        rows.append((f"relu->silu, {n} blocks{cpu} (passes.run, retyped, verified, first call: verify's memo "
                     "empty)", got["run_full_cold"], got["fx"]))
    return rows


def forward_rows(quick: bool, cpu_time: bool = False) -> list[tuple[str, float, float]]:
    """(emitted forward vs eager; fused forward vs fx fuse) on resnet50 or resnet18, one thread."""
    from zoo import import_torchvision

    tv = import_torchvision()
    name = "resnet18" if quick else "resnet50"
    model = tv.models.get_model(name).eval()
    x = torch.randn(8, 3, 224, 224)
    repeat = 3 if quick else 7
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ir_model = torchgraft.capture(model, (x[:2],))
        emitted = torchgraft.emit(ir_model).materialize().eval()
        fused = torchgraft.emit(torchgraft.passes.run(ir_model, "fuse-conv-bn").model).materialize().eval()
        fx_fused = torch.fx.experimental.optimization.fuse(copy.deepcopy(model))
        with torch.no_grad():
            t = paired({"eager": lambda: model(x), "ours": lambda: emitted(x),
                        "fused": lambda: fused(x), "fx_fused": lambda: fx_fused(x)}, repeat, warmup=1,
                       clock=time.thread_time if cpu_time else time.perf_counter)
    finally:
        torch.set_num_threads(threads)
    guards = len(ir_model.report.guards)
    med = statistics.median
    what = f"{name} forward, batch 8, 1 thread{', CPU s' if cpu_time else ''}"
    return [(f"{what}: emitted ({guards} guards) vs eager, best of {repeat}", min(t["ours"]), min(t["eager"])),
            (f"{what}: emitted vs eager, median of {repeat}", med(t["ours"]), med(t["eager"])),
            (f"{what}: fuse-conv-bn vs fx fuse(), best of {repeat}", min(t["fused"]), min(t["fx_fused"]))]


def llama_rows(quick: bool, cpu_time: bool = False) -> list[tuple[str, float, float]]:
    """Emitted forward vs eager of a tiny transformers Llama with a right-padded mask, one thread.

    The emitted forward keeps every guard capture added (``model.report.guards``: arguments that
    were None or given, ``use_cache=False``, size comparisons in the mask and attention code)."""
    from zoo import import_torchvision

    import_torchvision()  # transformers imports torchvision when it is installed
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = transformers.LlamaModel(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (4, 64))
    mask = torch.ones(4, 64, dtype=torch.long)
    mask[1, 48:] = 0
    mask[3, 40:] = 0
    kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    repeat, number = (5, 10) if quick else (21, 20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ir_model = torchgraft.capture(model, (), kwargs)
        emitted = torchgraft.emit(ir_model).materialize().eval()
        with torch.no_grad():
            want, got = model(**kwargs)["last_hidden_state"], emitted(**kwargs)["last_hidden_state"]
            if not torch.allclose(want, got, atol=1e-5, rtol=1e-5):
                raise AssertionError(f"emitted Llama differs from eager: {(want - got).abs().max()}")
            t = paired({"eager": lambda: model(**kwargs), "ours": lambda: emitted(**kwargs)}, repeat, number,
                       warmup=5, clock=time.thread_time if cpu_time else time.perf_counter)
    finally:
        torch.set_num_threads(threads)
    guards = len(ir_model.report.guards)
    what = f"tiny Llama forward, 4x64 padded, 1 thread{', CPU s' if cpu_time else ''}"
    label = f"{what}: emitted ({guards} guards) vs eager"
    return [(f"{label}, best of {repeat}x{number}", min(t["ours"]), min(t["eager"])),
            (f"{label}, median of {repeat}x{number}", statistics.median(t["ours"]), statistics.median(t["eager"]))]


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


SECTIONS = ("capture", "passes", "forward", "llama", "meta")


def main(argv: list[str] | None = None) -> None:
    """Run every comparison and print the table."""
    parser = argparse.ArgumentParser(description="torchgraft vs torch.fx benchmarks")
    parser.add_argument("--quick", action="store_true", help="small models and sizes")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the one-thread capture, pass and forward rows by thread CPU time, not wall time "
                             "(steadier under load)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    names = ["resnet18", "mobilenet_v3_small"] if args.quick else [
        "resnet50", "vit_b_16", "efficientnet_b0", "convnext_tiny", "swin_t"]
    sections: dict[str, Callable[[], list[tuple[str, float, float]]]] = {
        "capture": lambda: capture_rows(names, cpu_time=args.cpu_time),
        "passes": lambda: pass_rows([300] if args.quick else [1000, 4000], args.cpu_time),
        "forward": lambda: forward_rows(args.quick, args.cpu_time),
        "llama": lambda: llama_rows(args.quick, args.cpu_time),
        "meta": lambda: meta_row(args.quick),
    }
    rows = [row for name in SECTIONS if name in only for row in sections[name]()]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| comparison | torchgraft | torch.fx / reference | ratio |\n| --- | ---: | ---: | ---: |")
    for label, ours, theirs in rows:
        ratio = ours / theirs if theirs else float("nan")
        print(f"| {label} | {ours:.4f} | {theirs:.4f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
