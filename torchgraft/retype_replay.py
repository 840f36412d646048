"""``retype``'s replay over a module tree built from the IR (``retype_build``): the IR runs itself.

The modules ``build_from_ir`` makes for a Block, a Parallel or a SkipConnection are ``IRBlock`` holders
with no forward of their own, so the replay interprets every one of them: a Block's body (a Graph, or a
combinator body lowered to one) whatever its ``method`` (captured, hand-built, made by a pass), a
Parallel's branches and a SkipConnection's body on its children, joined by the ops
``ir.combine.combine_ops`` writes (the meaning emitted code has): ``ir.interpret.Interpreter.run`` and
``run_combinator`` do the work; this class only says when to step in. Leaf layers are called as
``MetaReplay`` calls them (shape rules, meta kernels). Every module it steps into records its output
type, so no forward hook is needed for them.

>>> IRReplay({}, {}, device="cpu").run_node(model.root, build_from_ir(model), "", (x,), {})   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchgraft.errors import CaptureError
from torchgraft.frontends.meta_replay import MetaReplay
from torchgraft.ir.nodes import Block, Node, Parallel, SkipConnection
from torchgraft.ir.types import type_of
from torchgraft.retype_build import IRBlock


class IRReplay(MetaReplay):
    """A ``MetaReplay`` that steps into every module built from the IR (an ``IRBlock``): see the module doc."""

    def run_node(self, node: Node, mod: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Interpret ``node`` when ``mod`` is an ``IRBlock`` (it has no forward), else as ``MetaReplay`` does."""
        if not isinstance(mod, IRBlock):
            return super().run_node(node, mod, path, args, kwargs)
        if isinstance(node, Block):
            out = self.run(node, mod, path, args, kwargs)
        elif isinstance(node, (Parallel, SkipConnection)):
            out = self.run_combinator(node, mod, path, args, kwargs)
        else:
            raise CaptureError(f"{path or '<root>'}: a {type(node).__name__} was built as a holder with no forward",
                               path)
        self.module_types.setdefault(path, type_of(out, self.symbols, self.meta_is))
        return out


__all__ = ["IRReplay"]
