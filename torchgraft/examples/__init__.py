"""Small models bundled with torchgraft for the demo, docs and tests (no download needed)."""

from torchgraft.examples.nets import BasicBlock, Net

__all__ = ["BasicBlock", "Net"]
