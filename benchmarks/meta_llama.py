"""Capture and emit a ~7B-parameter Llama config built on the meta device (no weights in memory).

    python benchmarks/meta_llama.py            # Llama-2-7B shapes: 32 layers, hidden 4096
    python benchmarks/meta_llama.py --layers 4 # a quicker run

Prints seconds for build, capture and emit, and the process's peak RSS. Target on the
2-core, 24 GB machine: capture + emit under 60 s, peak RSS under 2 GB.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch


def _import_transformers() -> object:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from zoo import import_torchvision  # transformers imports torchvision when installed

    import_torchvision()
    import transformers

    return transformers


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; returns the measured figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args(argv)
    import torchgraft

    transformers = _import_transformers()
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,  # type: ignore[attr-defined]
                                   num_hidden_layers=args.layers, num_attention_heads=32, num_key_value_heads=32)
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg).eval()  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    ids = torch.zeros((1, 16), dtype=torch.long, device="meta")
    ir_model = torchgraft.capture(model, (), {"input_ids": ids, "use_cache": False})
    t2 = time.perf_counter()
    code = torchgraft.emit(ir_model)
    t3 = time.perf_counter()
    figures = {
        "params_billion": sum(p.numel() for p in model.parameters()) / 1e9,
        "build_s": t1 - t0, "capture_s": t2 - t1, "emit_s": t3 - t2, "capture_plus_emit_s": t3 - t1,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "source_lines": float(len(code.source.splitlines())),
    }
    print("| figure | value |\n| --- | --- |")
    for k, v in figures.items():
        print(f"| {k} | {v:.2f} |")
    assert not ir_model.report.opaque, ir_model.report.summary()
    return figures


if __name__ == "__main__":
    main()
