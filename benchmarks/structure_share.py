"""How many captured Blocks have a forward that is only structure (Chain / SkipConnection / Parallel
over their children), over the torchvision classifiers. Prints one row per model and the total:
Blocks capture stored as structure (``ir.stored``), plus Blocks kept as Graphs whose forward still reads
as structure (the printer's view), over all Blocks.

    python benchmarks/structure_share.py            # every classifier (a few minutes on 2 cores)
    python benchmarks/structure_share.py resnet18   # some

Models are built and captured on the meta device (no weights in memory). A Block counts once per
instance; Blocks whose forward is a Graph that ``ir.structure.recognize`` cannot describe are the rest.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from zoo import import_torchvision, input_size  # noqa: E402

import torchgraft  # noqa: E402
from torchgraft.ir.graph import Graph  # noqa: E402
from torchgraft.ir.lower import is_structural  # noqa: E402
from torchgraft.ir.nodes import Block  # noqa: E402
from torchgraft.ir.printer import structural_form  # noqa: E402
from torchgraft.ir.traverse import walk  # noqa: E402


def share(model: torchgraft.ir.Model) -> tuple[int, int, int]:
    """(Blocks whose forward capture stored as structure, Blocks whose Graph forward reads as structure but
    was kept a Graph (``ir.stored._fits`` says why: e.g. a block the example never ran, so nothing says its input
    is a tensor), all Blocks)."""
    blocks = [n for _, n in walk(model.root) if isinstance(n, Block)]
    helpers = model.helper_functions()
    stored = sum(is_structural(b.body) for b in blocks)
    viewed = sum(isinstance(b.body, Graph) and structural_form(b.body, b, helpers) is not None for b in blocks)
    return stored, viewed, len(blocks)


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    tv = import_torchvision()
    names = names or tv.models.list_models(module=tv.models)
    total = [0, 0, 0]
    print(f"{'model':24} stored + graph-only structure / blocks")
    for name in names:
        size = input_size(name)
        try:
            with torch.device("meta"):
                module = tv.models.get_model(name).eval()
            captured = torchgraft.capture(module, (torch.zeros(2, 3, size, size, device="meta"),))
        except Exception as e:  # noqa: BLE001 - a benchmark row, not a test (some models cannot be built on meta)
            print(f"{name:24} not counted: {type(e).__name__}: {str(e)[:60]}")
            continue
        row = share(captured)
        total = [t + r for t, r in zip(total, row)]
        print(f"{name:24} {row[0]:4} + {row[1]:4} / {row[2]:4}")
    stored, viewed, blocks = total
    print(f"{'total':24} {stored:4} + {viewed:4} / {blocks:4}: {100 * stored / max(blocks, 1):.0f}% stored as "
          f"structure, {100 * (stored + viewed) / max(blocks, 1):.0f}% structure in all")

if __name__ == "__main__":
    main(sys.argv[1:])
