"""Activation wrapper classes written as torch's own layer: no class for ``return F.silu(input)``.

transformers wraps activations in small classes (``SiLUActivation``: ``return F.silu(input)``;
``GELUActivation``: ``return F.gelu(input)``), which ``model.py`` would copy as classes of their own.
A Block whose whole forward is one activation of its one input is the torch layer of that
activation (``nn.SiLU()``, ``nn.GELU(approximate="tanh")``, ``nn.ReLU(inplace=True)``), so it is
emitted as that layer in its parent's ``__init__`` and no class is defined:

    class SiLUActivation(nn.Module):
        def forward(self, input: Tensor) -> Tensor:
            return F.silu(input)
    ...     self.act_fn = SiLUActivation()
->  ...     self.act_fn = nn.SiLU()

Why this is faithful. The Block has no state, no attributes, no children and no other forward in
training, so its state_dict keys (none) and its behaviour in both modes are the layer's; the layer's
forward is the same functional call with the same options (``nn.GELU.forward`` is
``F.gelu(input, approximate=self.approximate)``; every ``ir.Activation`` spelling is one op, by the IR's
definition). It is called the same way: every call in the emitted forwards passes exactly one
positional argument (a Graph's ``ChildCall``, or structure, which calls with one value).
Left alone (still a class): a formula that only approximates an activation (``NewGELUActivation``'s
tanh formula is not ``F.gelu(approximate="tanh")`` bit for bit: it is a Graph of several ops, not one
call); the root; a Block read as an attribute, named by a tie, or below a forward that is copied source
(which may do anything with it); a Block called with keywords or several arguments; and every instance of
a class when any instance of it is not such a Block or computes another activation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from torchgraft.ir.activations import Spelling
from torchgraft.ir.graph import ChildCall, GetAttr, Graph, InputKind, PrimCall
from torchgraft.ir.lower import block_graph, is_structural
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, ClassRef, Node
from torchgraft.ir.primitives import Activation
from torchgraft.ir.traverse import join, map_tree, walk
from torchgraft.ir.values import Ref


def activation_of(block: Block) -> Activation | None:
    """The torch layer ``block`` is (an ``Activation`` spelled as a module), or None.

    ``block`` must have no state, attributes, children or other train forward, and its forward must be
    exactly one activation of its single input, returned as is.
    """
    if block.children or block.state or block.constants or block.extra_state is not None:
        return None
    if block.train_body is not None and block.train_body != block.body:
        return None
    body = block.body
    act: object = body
    if isinstance(body, Graph):
        if len(body.inputs) != 1 or len(body.ops) != 1:
            return None
        inp, op = body.inputs[0], body.ops[0]
        if (inp.kind is not InputKind.POSITIONAL or inp.default is not None or not isinstance(op.target, PrimCall)
                or op.args != (Ref(inp.name),) or op.kwargs or body.output != Ref(op.name)):
            return None
        act = op.target.prim
    if not isinstance(act, Activation) or act.reparam:
        return None
    return replace(act, spelling=Spelling.MODULE)


def _graphs(block: Block) -> list[Graph] | None:
    """The forwards of ``block`` as Graphs (structure lowered), or None when one is copied source."""
    out = []
    for body in (block.body, block.train_body):
        if body is None:
            continue
        if isinstance(body, Graph):
            out.append(body)
        elif is_structural(body):
            out.append(block_graph(block, body))
        else:
            return None
    return out


def _fenced(model: Model) -> tuple[set[str], list[str], dict[str, bool]]:
    """Paths that must stay as they are: tied, read as attributes, or below copied source; and for every
    called path, whether all its calls pass exactly one positional argument."""
    tied = {p for pair in model.ties for p in pair}
    opaque_below: list[str] = []
    one_arg: dict[str, bool] = {}
    for path, node in walk(model.root):
        if not isinstance(node, Block):
            continue
        graphs = _graphs(node)
        if graphs is None:
            opaque_below.append(path)
            continue
        for g in graphs:
            for op in g.ops:
                if isinstance(op.target, GetAttr):
                    tied.add(join(path, op.target.path))
                elif isinstance(op.target, ChildCall):
                    callee = join(path, op.target.path)
                    simple = len(op.args) == 1 and not op.kwargs
                    one_arg[callee] = one_arg.get(callee, True) and simple
    return tied, opaque_below, one_arg


def _near(path: str, other: str) -> bool:
    """``path`` is ``other``, inside it, or holds it."""
    return path == other or path.startswith(other + ".") or other.startswith(path + ".")


def layer_activations(model: Model) -> Model:
    """``model`` with activation wrapper Blocks replaced by the torch layer they are (module docstring)."""
    by_class: dict[ClassRef, list[tuple[str, Activation | None]]] = defaultdict(list)
    for path, node in walk(model.root):
        if isinstance(node, Block):
            by_class[node.cls].append((path, activation_of(node) if path else None))
    wanted = {cls: insts for cls, insts in by_class.items() if any(a is not None for _, a in insts)}
    if not wanted:
        return model
    fenced, below, one_arg = _fenced(model)
    swap: dict[str, Activation] = {}
    for insts in wanted.values():
        first = insts[0][1]
        if first is None or any(a != first for _, a in insts):  # another body somewhere: the class stays
            continue
        paths = [p for p, _ in insts]
        if any(_near(p, f) for p in paths for f in fenced) \
                or any(b == "" or p.startswith(b + ".") for p in paths for b in below) \
                or not all(one_arg.get(p, True) for p in paths):
            continue
        swap.update((p, a) for p, a in insts if a is not None)
    if not swap:
        return model

    def rebuild(path: str, node: Node) -> Node:
        return swap.get(path, node)

    return model.with_root(map_tree(model.root, rebuild))


__all__ = ["activation_of", "layer_activations"]
