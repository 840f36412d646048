"""Why ``fuse-conv-bn`` left a BatchNorm alone: one ``Skip`` per BatchNorm that is still there after it.

The pass reports the sites it folded; this module explains the others, from the model before the
pass: a BatchNorm module whose input is not a Conv/Linear layer of the same ``nn.Sequential`` or
forward (it follows a Block, it comes first, its conv's output has another user), a conv/BN pair
that does not match (dims, channels, a Linear on non-2-D inputs), a shared layer, a site the
``where=`` selector leaves out, a forward kept as copied source, an opaque module holding BatchNorm
state, and an ``F.batch_norm`` call that the functional rule does not cover.
"""

from __future__ import annotations

from collections.abc import Callable

from torchgraft.ir.graph import ChildCall, FunctionCall, GetAttr, Graph, MethodCall, Op
from torchgraft.ir.lower import block_graph, is_structural
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, Node, Opaque, module_children
from torchgraft.ir.opkinds import OpKind, is_kind
from torchgraft.ir.primitives import BatchNorm, Conv, Linear, Primitive
from torchgraft.ir.traverse import join, walk
from torchgraft.ir.types import UNKNOWN, TensorType
from torchgraft.ir.values import Const, Ref
from torchgraft.passes.base import Skip
from torchgraft.passes.conv_bn_rule import tail
from torchgraft.passes.fuse_conv_bn_graph import bind_batch_norm

Selected = Callable[[str, Node], bool]
"""Whether the pass's ``where=`` selects the layer at a path."""
Tied = Callable[[str], bool]
"""Whether a path is shared (a tie's alias or target)."""


def skipped_sites(before: Model, after: Model, selected: Selected, tied: Tied) -> list[Skip]:
    """A ``Skip`` for every BatchNorm module, ``F.batch_norm`` call and opaque BatchNorm holder that
    ``after`` still has, with the reason read from ``before``."""
    left = {p for p, n in walk(after.root) if isinstance(n, BatchNorm)}
    left_fn = {(p, op.name) for p, n in walk(after.root) if isinstance(n, Block) for op in _bn_calls(n)}
    out: list[Skip] = []
    for path, node in walk(before.root):
        if isinstance(node, Opaque) and any(s.name.endswith("running_mean") for s in node.state):
            out.append(Skip(path, f"opaque module {node.cls} holds BatchNorm state; capture could not see "
                                  f"into it ({node.reason})"))
        for name, child in module_children(node):
            where = join(path, name)
            if isinstance(child, BatchNorm) and where in left:
                out.append(Skip(where, _module_reason(before, path, node, name, selected, tied)))
        if isinstance(node, Block):
            out += [Skip(join(path, op.name), f"F.batch_norm: {_functional_reason(node, op)}")
                    for op in _bn_calls(node) if (path, op.name) in left_fn]
    return out


def _bn_calls(block: Block) -> list[Op]:
    body = block.body if isinstance(block.body, Graph) else None
    return [op for op in (body.ops if body else ()) if is_kind(op, OpKind.BATCH_NORM)]


def _pair_reason(conv_path: str, conv: Node, bn: BatchNorm, out_type: object,
                 selected: Selected, tied: Tied, bn_path: str) -> str:
    """Why an adjacent (layer, BatchNorm) pair was not folded."""
    conv_path, conv = tail(conv, conv_path)
    if isinstance(conv, Block):
        return (f"its input comes from {conv_path} (Block<{conv.cls.name}>), not from a Conv/Linear layer; "
                "a conv inside that block cannot absorb a BatchNorm outside it")
    if not isinstance(conv, (Conv, Linear)):
        return f"its input comes from {conv_path} ({_kind(conv)}), not from a Conv/Linear layer"
    if conv.reparam:
        return (f"{conv_path} is reparametrized ({', '.join(r.label() for r in conv.reparam)}): its weight is "
                "computed, so folding would replace the reparametrization; remove it first to fold")
    if isinstance(conv, Conv) and bn.op != f"BatchNorm{conv.dims}d":
        return f"{bn.op} does not match {conv.op} at {conv_path}"
    if isinstance(conv, Linear) and not (bn.op == "BatchNorm1d" and isinstance(out_type, TensorType)
                                         and out_type.rank == 2):
        return f"Linear + {bn.op} folds only on 2-D activations; {conv_path} gives {out_type}"
    channels = conv.out_channels if isinstance(conv, Conv) else conv.out_features
    if bn.num_features != channels:
        return f"{bn.op}({bn.num_features}) does not match the {channels} outputs of {conv_path}"
    if tied(conv_path) or tied(bn_path):
        return f"{conv_path} or {bn_path} is shared (reachable under two names); folding would change every use"
    if not selected(conv_path, conv):
        return f"{conv_path} is not selected by where="
    return "not folded"


def _module_reason(before: Model, parent_path: str, parent: Node, name: str, selected: Selected,
                   tied: Tied) -> str:
    bn = dict(module_children(parent))[name]
    assert isinstance(bn, BatchNorm)
    bn_path = join(parent_path, name)
    if not bn.track_running_stats:
        return "it has no running statistics (track_running_stats=False)"
    if isinstance(parent, Chain):
        i = parent.names.index(name)
        if i == 0:
            return f"it is the first layer of nn.Sequential {parent_path or '<root>'}: its input comes from outside"
        prev_path = join(parent_path, parent.names[i - 1])
        return _pair_reason(prev_path, parent.items[i - 1], bn, before.type_at(prev_path), selected, tied,
                            bn_path)
    if isinstance(parent, Block):
        return _block_reason(before, parent_path, parent, name, bn, selected, tied)
    return f"it sits in a {type(parent).__name__} at {parent_path or '<root>'}, where the pass looks for no pairs"


def _block_reason(before: Model, path: str, block: Block, name: str, bn: BatchNorm, selected: Selected,
                  tied: Tied) -> str:
    where = path or "<root>"
    # a structural body is read as its lowering: Chain[conv, bn] is conv's one user being bn there too
    graphs = [block_graph(block, g) for g in (block.body, block.train_body)
              if g is not None and (isinstance(g, Graph) or is_structural(g))]
    if not graphs:
        return (f"the forward of {where} (Block<{block.cls.name}>) was kept as copied source, which the pass "
                "does not rewrite")
    for g in graphs:
        calls = [op for op in g.ops if isinstance(op.target, ChildCall) and op.target.path == name]
        if len(calls) != 1:
            return (f"Block<{block.cls.name}> at {where} calls it {len(calls)} times in its forward"
                    if calls else f"the forward of {where} does not call it directly")
        op = calls[0]
        if len(op.args) != 1 or op.kwargs or not isinstance(op.args[0], Ref):
            return "it is called with more than one argument"
        src = next((o for o in g.ops if o.name == op.args[0].name), None)
        if src is None:
            return f"its input is the input {op.args[0].name!r} of {where}, not a Conv/Linear output"
        if not isinstance(src.target, ChildCall) or "." in src.target.path:
            return f"its input is {_describe(src)}, not the output of a Conv/Linear layer of {where}"
        others = [u for u in g.users()[src.name] if u != op.name]
        if others:
            return f"the output of {join(path, src.target.path)} is also used by {', '.join(others)}"
        conv = dict(block.children).get(src.target.path)
        if conv is None:
            return f"its input comes from {src.target.path}, which is not a child layer of {where}"
        calls_conv = sum(isinstance(o.target, ChildCall) and o.target.path == src.target.path for o in g.ops)
        if calls_conv != 1:
            return f"{join(path, src.target.path)} is called {calls_conv} times in the forward of {where}"
        out_type = src.type if src.type != UNKNOWN else before.type_at(join(path, src.target.path))
        reason = _pair_reason(join(path, src.target.path), conv, bn, out_type, selected, tied, join(path, name))
        if reason != "not folded":
            return reason
    return "the training-mode forward pairs it differently from the eval-mode forward"


def _kind(node: Node) -> str:
    if isinstance(node, Chain):
        return "an empty nn.Sequential"
    if isinstance(node, Opaque):
        return f"opaque {node.cls.name}"
    return node.op if isinstance(node, Primitive) else type(node).__name__


def _describe(op: Op) -> str:
    t = op.target
    if isinstance(t, FunctionCall):
        return f"{t.qualname}(...) ({op.name})"
    if isinstance(t, MethodCall):
        return f".{t.name}(...) ({op.name})"
    if isinstance(t, GetAttr):
        return f"the attribute {t.path}"
    if isinstance(t, ChildCall):
        return f"the output of {t.path}"
    return op.name


def _functional_reason(block: Block, op: Op) -> str:
    bound = bind_batch_norm(op)
    if bound is None:
        return "its arguments do not bind to F.batch_norm's signature"
    training = bound.get("training", Const(False))
    if training == Const(True):
        return "training=True: it normalises with each batch's statistics"
    g = block.body
    assert isinstance(g, Graph)
    src = bound.get("input")
    prod = next((o for o in g.ops if isinstance(src, Ref) and o.name == src.name), None)
    if prod is None or not isinstance(prod.target, ChildCall) or "." in prod.target.path:
        return f"its input is {_describe(prod) if prod else 'a block input'}, not the output of a Conv/Linear child"
    if not isinstance(dict(block.children).get(prod.target.path), (Conv, Linear)):
        return f"its input comes from {prod.target.path}, not a Conv/Linear layer"
    if len(g.users()[prod.name]) != 1:
        return f"the output of {prod.target.path} has another user"
    return ("its statistics are not this block's own buffers read only here, its eps is not a constant, or the "
            "layer is shared or not selected")
