"""How many captured Blocks have a forward that is only structure (Chain / SkipConnection / Parallel
over their children), over the torchvision classifiers. Prints one row per model and the total.

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
from torchgraft.ir.nodes import Block  # noqa: E402
from torchgraft.ir.printer import structural_form  # noqa: E402
from torchgraft.ir.traverse import walk  # noqa: E402


def share(model: torchgraft.ir.Model) -> tuple[int, int]:
    """(Blocks whose forward is structure, all Blocks)."""
    blocks = [n for _, n in walk(model.root) if isinstance(n, Block)]
    helpers = model.helper_functions()
    return sum(structural_form(b.body, b, helpers) is not None for b in blocks), len(blocks)


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    tv = import_torchvision()
    names = names or tv.models.list_models(module=tv.models)
    total = [0, 0]
    for name in names:
        size = input_size(name)
        try:
            with torch.device("meta"):
                module = tv.models.get_model(name).eval()
            captured = torchgraft.capture(module, (torch.zeros(2, 3, size, size, device="meta"),))
        except Exception as e:  # noqa: BLE001 - a benchmark row, not a test (some models cannot be built on meta)
            print(f"{name:24} not counted: {type(e).__name__}: {str(e)[:60]}")
            continue
        structural, blocks = share(captured)
        total[0] += structural
        total[1] += blocks
        print(f"{name:24} {structural:4} / {blocks:4}")
    print(f"{'total':24} {total[0]:4} / {total[1]:4} = {100 * total[0] / max(total[1], 1):.0f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
