"""swap-activation (torchgraft) vs torch.fx's subgraph_rewriter on a model of N blocks.

Run as a script (not a test)::

    python benchmarks/passes_vs_fx.py --blocks 1000 4000 --repeat 1

The model is an ``nn.Sequential`` of N small blocks, each ``F.relu(self.linear(x))``, under a root
module whose forward calls it.
torchgraft: the model is captured once (time reported), then timed are

- ``pass``: ``SwapActivation(from_="relu", to="silu").rewrite(model)``, the rewrite alone;
- ``run``: ``torchgraft.passes.run(model, "swap-activation{from=relu to=silu}", verify=False)``,
  which also keeps every type right and builds the report. Here the types are carried over: the pass
  proves that each swap keeps them (an elementwise activation for another on a floating-point input:
  ``passes/swap_types.py``); a pass that does not prove it has every type re-inferred (modules built on
  meta from the IR, or from the emitted model.py, then replayed; equal blocks share one module and are
  replayed once per input type). ``--full-retype`` (``pipeline.CARRY_TYPES = False``) times that;
- ``run_untyped``: ``passes.run(model, ..., retype_after=False)``: verified, types not re-inferred;
- ``run_full``: ``passes.run(model, ...)`` as a user calls it: retyped and verified. ``verify`` remembers the
  nodes it found clean (``ir.checkmemo``, by identity): from the second run on, the nodes the pass kept (the
  Linear layers; each Block's members, which the pass keeps while it rewrites the forward) are not checked again;
- ``run_full_cold``: the same with that memo emptied before each run (a user's first call).

torch.fx: ``symbolic_trace`` of the whole model (time reported), then timed is
``torch.fx.subgraph_rewriter.replace_pattern(gm, F.relu(x) -> F.silu(x))`` on a fresh trace.

Both rewrites are checked to produce a model whose output equals the original with silu.
Prints a Markdown table; the ratio is fx rewrite time / torchgraft time (higher: torchgraft faster).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.fx
import torch.fx.subgraph_rewriter
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchgraft  # noqa: E402
from torchgraft.ir import checkmemo  # noqa: E402
from torchgraft.passes.swap_activation import SwapActivation  # noqa: E402

PIPELINE = "swap-activation{from=relu to=silu}"
T = TypeVar("T")


class Block(nn.Module):
    """One small block: ``relu(linear(x))`` written with ``F.relu``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(x))


class Net(nn.Module):
    """The N blocks in an ``nn.Sequential``, under a root module with a forward (a root that is itself a
    Sequential has no typed signature in the IR, and ``passes.run`` would skip re-inferring types)."""

    def __init__(self, blocks: int, width: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(Block(width) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def build(blocks: int, width: int = 4) -> Net:
    torch.manual_seed(0)
    return Net(blocks, width).eval()


def pattern(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


def replacement(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)


def best(fn: Callable[[], T], repeat: int, clock: Callable[[], float] = time.perf_counter,
         setup: Callable[[], object] | None = None) -> tuple[float, T]:
    """The fastest of ``repeat`` runs (seconds by ``clock``) and the last result; ``setup`` runs (untimed)
    before each."""
    times: list[float] = []
    for _ in range(max(repeat, 1)):
        if setup is not None:
            setup()
        gc.collect()
        t = clock()
        out = fn()
        times.append(clock() - t)
    return min(times), out


def reference(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    saved = F.relu
    F.relu = lambda t, inplace=False: F.silu(t)  # type: ignore[assignment]
    try:
        return net(x)
    finally:
        F.relu = saved


def profile(fn: Callable[[], object], top: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def measure(blocks: int, repeat: int, check: bool, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """One row: seconds by ``clock`` (wall time; ``time.thread_time``, this thread's CPU time, is steadier on a
    loaded machine: all of it is single-threaded Python), best of ``repeat``."""
    net = build(blocks)
    x = torch.randn(2, 4)
    row: dict[str, float] = {"blocks": blocks}

    t = time.perf_counter()
    model = torchgraft.capture(net, (x,))
    row["capture"] = time.perf_counter() - t
    swap = SwapActivation(from_="relu", to="silu")
    row["pass"], (_, matches) = best(lambda: swap.rewrite(model), repeat, clock)
    assert len(matches) == blocks, (len(matches), blocks)
    row["run"], result = best(lambda: torchgraft.passes.run(model, PIPELINE, verify=False), repeat, clock)
    row["run_untyped"], _ = best(lambda: torchgraft.passes.run(model, PIPELINE, retype_after=False), repeat, clock)
    row["run_full"], _ = best(lambda: torchgraft.passes.run(model, PIPELINE), repeat, clock)
    row["run_full_cold"], _ = best(lambda: torchgraft.passes.run(model, PIPELINE), repeat, clock, setup=checkmemo.clear)

    t = time.perf_counter()
    gm = torch.fx.symbolic_trace(net)
    row["trace"] = time.perf_counter() - t

    times: list[float] = []
    for _ in range(max(repeat, 1)):  # a fresh trace each time (replace_pattern edits in place); only the rewrite timed
        g = gm if not times else torch.fx.symbolic_trace(net)
        gc.collect()
        t = clock()
        replaced = torch.fx.subgraph_rewriter.replace_pattern(g, pattern, replacement)
        times.append(clock() - t)
        assert len(replaced) == blocks, (len(replaced), blocks)
        gm = g
    row["fx"] = min(times)

    if check:
        with torch.no_grad():
            ref = reference(net, x)
            ours = torchgraft.emit(result.model).materialize().eval()(x)
            theirs = gm(x)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(theirs, ref, rtol=1e-5, atol=1e-6)
    return row


def table(rows: list[dict[str, float]]) -> str:
    head = ("| blocks | capture (s) | fx trace (s) | torchgraft pass (s) | run, verified, no retype (s) "
            "| run, retyped (s) | run, retyped, verified (s) | same, first call (s) | fx replace_pattern (s) "
            "| fx / pass | fx / run no retype | fx / run retyped | fx / run retyped, verified | same, first call |")
    lines = [head, "|---:" * 14 + "|"]
    for r in rows:
        lines.append(f"| {int(r['blocks']):,} | {r['capture']:.2f} | {r['trace']:.3f} | {r['pass']:.4f} | "
                     f"{r['run_untyped']:.3f} | {r['run']:.3f} | {r['run_full']:.3f} | {r['run_full_cold']:.3f} | "
                     f"{r['fx']:.3f} | {r['fx'] / r['pass']:.0f}x | {r['fx'] / r['run_untyped']:.1f}x | "
                     f"{r['fx'] / r['run']:.1f}x | {r['fx'] / r['run_full']:.1f}x | "
                     f"{r['fx'] / r['run_full_cold']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1000, 4000], help="model sizes (number of blocks)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement (the fastest is reported)")
    ap.add_argument("--no-check", action="store_true", help="skip the numerical check of both rewrites")
    ap.add_argument("--profile", type=int, metavar="BLOCKS", help="also profile passes.run at this size")
    ap.add_argument("--profile-verified", action="store_true",
                    help="profile passes.run as a user calls it (retyped and verified), not with verify=False")
    ap.add_argument("--cpu-time", action="store_true", help="time by this thread's CPU time (a loaded machine)")
    ap.add_argument("--full-retype", action="store_true",
                    help="re-infer every type even where the pass proves them kept (pipeline.CARRY_TYPES = False)")
    args = ap.parse_args(argv)
    if args.full_retype:
        torchgraft.passes.pipeline.CARRY_TYPES = False

    warm = torchgraft.capture(build(2), (torch.randn(2, 4),))  # one-time imports (meta decompositions)
    torchgraft.passes.run(warm, PIPELINE)
    rows = []
    for n in args.blocks:
        clock = time.thread_time if args.cpu_time else time.perf_counter
        rows.append(measure(n, args.repeat, not args.no_check, clock))
        print(f"done: {n} blocks", file=sys.stderr)
    print(table(rows))
    if args.profile:
        model = torchgraft.capture(build(args.profile), (torch.randn(2, 4),))
        verify = bool(args.profile_verified)
        torchgraft.passes.run(model, PIPELINE, verify=verify)  # the second call, as in the table's best of N
        print(f"\npasses.run (verify={verify}) profile at {args.profile} blocks (cumulative):\n")
        print(profile(lambda: torchgraft.passes.run(model, PIPELINE, verify=verify), 30))


if __name__ == "__main__":
    main()
