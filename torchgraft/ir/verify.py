"""``verify(model)``: check the invariants construction alone cannot see.

Checked, with the node path and a fix in every message:

* every ``ChildCall``/``ChildRef`` in a Block's forward names an existing child (through
  Chain, Container and nested Block names), and never a Container (it has no forward);
* every ``GetAttr`` names a child, a state entry or constant of the Block, or the state
  of a primitive/opaque child;
* module-level names are unique, non-empty and free of dots;
* state accounting: the state_dict keys the IR implies (primitives' persistent state,
  Blocks' persistent ``StateSpec``s, Opaque state) equal ``model.weights`` when it is
  non-empty, with equal shapes (and dtypes where the IR records them);
* ``model.ties``: every alias and target is a module path or a state key;
* Chains compose: a Conv/BatchNorm/GroupNorm/Linear/LayerNorm item agrees with the
  channels (dim 1) or features (last dims) of the previous item's known output type;
* a functional ``PrimCall`` never wraps a primitive with state (it would have no weights);
* what ``emit`` writes as code is safe (``ir.codecheck``): every ``FunctionCall`` is allow-listed
  (``ir.functions``) or names one of the model's helpers, class and helper names are identifiers,
  an ``Opaque`` names an ``nn.Module`` class. A model read from JSON is untrusted: verify it before emitting.

All problems are collected and raised together as one ``IRError``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from itertools import pairwise

from torchgraft.errors import IRError
from torchgraft.ir.aliasing import ChildLookup, Fresh, node_fresh
from torchgraft.ir.codecheck import code_problems
from torchgraft.ir.extra_state import EXTRA_STATE_KEY
from torchgraft.ir.graph import ChildCall, GetAttr, Graph, Guard, PrimCall
from torchgraft.ir.model import Helper, Model
from torchgraft.ir.nodes import (
    Block,
    Chain,
    ChildRef,
    Container,
    Node,
    Opaque,
    Parallel,
    SkipConnection,
    module_children,
)
from torchgraft.ir.primitives import BatchNorm, Conv, GroupNorm, LayerNorm, Linear, Primitive
from torchgraft.ir.traverse import join, node_at, walk
from torchgraft.ir.types import TensorType, ValueType

MAX_LISTED = 5
"""How many keys a missing/unexpected-keys message lists before ``...``."""

StateInfo = dict[str, tuple[tuple[int, ...], str | None]]
"""state_dict key → (shape, dtype name or None when the IR does not record it)."""


def _where(path: str) -> str:
    return path or "<root>"


def _prim_state(prim: Primitive, path: str) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
    try:
        return prim.state()
    except Exception as e:  # noqa: BLE001 - building the layer may fail in many ways
        raise IRError(f"{_where(path)}: cannot build {prim.label()} to list its state ({type(e).__name__}: {e}); "
                      "fix the primitive's arguments") from e


def implied_state(root: Node) -> StateInfo:
    """The state_dict keys (with shapes, dtypes) the IR tree implies, in module order."""
    return _implied(walk(root))


def _implied(nodes: Iterable[tuple[str, Node]]) -> StateInfo:
    """``implied_state`` of the (path, node) pairs of a walk."""
    out: StateInfo = {}
    for path, node in nodes:
        if isinstance(node, Primitive):
            out.update({join(path, n): (tuple(s), None) for n, s, _ in _prim_state(node, path)})
        elif isinstance(node, Block):
            out.update({join(path, s.name): (tuple(s.shape), s.dtype) for s in node.state if s.persistent})
        elif isinstance(node, Opaque):
            out.update({join(path, s.name): (tuple(s.shape), s.dtype) for s in node.state})
    return out


def _resolve(block: Block, path: str) -> tuple[Node | None, str]:
    """The node ``path`` names below ``block`` and the unresolved rest ("" when fully resolved)."""
    node: Node = block
    parts = path.split(".")
    for i, part in enumerate(parts):
        kids = dict(module_children(node))
        if part not in kids:
            return node, ".".join(parts[i:])
        node = kids[part]
    return node, ""


def _attr_exists(node: Node | None, rest: str) -> bool:
    if rest == "":
        return True
    if isinstance(node, Opaque):
        return any(s.name == rest or s.name.startswith(rest + ".") for s in node.state)
    if "." in rest:
        return False
    if isinstance(node, Block):
        return rest in {s.name for s in node.state} | {n for n, _ in node.constants}
    if isinstance(node, Primitive):
        return rest in {n for n, _, _ in _prim_state(node, "")}
    return False


def _body_nodes(node: Node | None) -> Iterator[Node]:
    """Every node of a Block body (combinators, refs, graphs, inline primitives), outer first."""
    if node is None:
        return
    yield node
    if isinstance(node, (Chain, Parallel, SkipConnection)):
        for _, item in module_children(node):
            yield from _body_nodes(item)


def _calls(node: Node) -> Iterator[str]:
    if isinstance(node, ChildRef):
        yield node.path
    elif isinstance(node, Graph):
        yield from (op.target.path for op in node.ops if isinstance(op.target, ChildCall))


def _check_block(block: Block, path: str, helpers: Mapping[str, Helper]) -> Iterator[str]:
    where, cls = _where(path), f"Block<{block.cls.name}>"
    kids = dict(block.children)
    for body in (block.body, block.train_body):
        for node in _body_nodes(body):
            for ref in _calls(node):
                target, rest = (kids[ref], "") if ref in kids else _resolve(block, ref)
                if rest:
                    yield (f"{where}: {cls} calls child {ref!r}, which does not exist (children: "
                           f"{[n for n, _ in block.children]}); add the child or fix the call's path")
                elif isinstance(target, Container):
                    yield f"{where}: {cls} calls {ref!r}, a {target.kind}, which has no forward; call one of its items"
            if isinstance(node, Graph):
                yield from _check_graph(node, block, where, cls)
            elif isinstance(node, (SkipConnection, Parallel)):
                yield from _check_in_place(node, where, helpers, functools.partial(node_at, block))
            elif isinstance(node, Primitive) and _prim_state(node, path):
                yield (f"{where}: the forward of {cls} uses {node.label()} inline, but it has state; make it a "
                       "child of the block and refer to it with ChildRef")


def _check_in_place(node: SkipConnection | Parallel, where: str, helpers: Mapping[str, Helper],
                    child: ChildLookup | None = None) -> Iterator[str]:
    """An in-place join (``Combine(in_place=True)``) writes into its first value: that must be a tensor the
    branch made, never the input passed through (``ir.aliasing``)."""
    if not node.combine.in_place:
        return
    target = node.body if isinstance(node, SkipConnection) else node.branches[0]
    if node_fresh(target, child, helpers) is not Fresh.NEW:
        what = "body" if isinstance(node, SkipConnection) else "first branch"
        shown = target.path if isinstance(target, ChildRef) else type(target).__name__
        yield (f"{where}: {type(node).__name__}({node.combine}, in_place=True) writes into the result of its {what} "
               f"({shown}), which may be its input itself (a pass-through layer, a view, an unknown module): the "
               "write would reach the caller's tensor; use an out-of-place Combine (in_place=False)")


def _check_graph(graph: Graph, block: Block, where: str, cls: str) -> Iterator[str]:
    guards = {op.name for op in graph.ops if isinstance(op.target, Guard)}
    for op in graph.ops:
        t = op.target
        for read in set(op.reads()) & guards:
            yield (f"{where}: op {op.name!r} of {cls} reads {read!r}, a guard, whose value is None; guards "
                   "only check a condition: read the value the guard checks instead")
        if isinstance(t, GetAttr) and not _attr_exists(*_resolve(block, t.path)):
            yield (f"{where}: op {op.name!r} of {cls} reads self.{t.path}, which is neither a child, a state entry "
                   "nor a constant of the block; add it to Block.state/constants or fix the path")
        state = _prim_state(t.prim, where) if isinstance(t, PrimCall) else ()
        if isinstance(t, PrimCall) and state:
            yield (f"{where}: op {op.name!r} of {cls} calls {t.prim.label()} functionally, but it has state "
                   f"{[n for n, _, _ in state]}; make it a child of the block and call it with ChildCall")


def _check_names(node: Node, path: str) -> Iterator[str]:
    names = [n for n, _ in module_children(node)]
    if not names and not isinstance(node, Block):
        return
    if isinstance(node, Block):
        names += [s.name for s in node.state] + [n for n, _ in node.constants]
    if len(set(names)) < len(names):
        dup = sorted(n for n, k in Counter(names).items() if k > 1)
        yield f"{_where(path)}: member names {dup} are used more than once; rename them so each is unique"
    if all(n and "." not in n for n in names):
        return
    bad = [n for n in names if not n or "." in n]
    if bad:
        yield f"{_where(path)}: member names {bad} are empty or contain '.'; state_dict keys need plain names"


def _expected_dims(item: Node) -> tuple[str, int | tuple[int, ...], str] | None:
    """(what, size(s), where in the input) an item needs from its input, when it is checkable."""
    if isinstance(item, Conv):
        return "in_channels", item.in_channels, "dim 1"
    if isinstance(item, BatchNorm):
        return "num_features", item.num_features, "dim 1"
    if isinstance(item, GroupNorm):
        return "num_channels", item.num_channels, "dim 1"
    if isinstance(item, Linear):
        return "in_features", item.in_features, "last dim"
    if isinstance(item, LayerNorm):
        return "normalized_shape", item.normalized_shape, "last dims"
    return None


def _mismatch(t: TensorType, where: str, size: int | tuple[int, ...]) -> bool:
    if isinstance(size, tuple):
        got = t.shape[len(t.shape) - len(size):] if len(t.shape) >= len(size) else ()
        return len(got) == len(size) and all(isinstance(g, int) for g in got) and tuple(got) != size
    dim = t.shape[1] if where == "dim 1" and t.rank >= 2 else t.shape[-1] if where == "last dim" and t.rank else None
    return isinstance(dim, int) and dim != size


def _check_chain(chain: Chain, path: str, types: dict[str, ValueType]) -> Iterator[str]:
    for (prev, _), (name, item) in pairwise(chain.named()):
        t, need = types.get(join(path, prev)), _expected_dims(item)
        if isinstance(t, TensorType) and need is not None and _mismatch(t, need[2], need[1]):
            what, size, where = need
            yield (f"{join(path, name)}: {item.label() if isinstance(item, Primitive) else name} has {what}={size} "
                   f"but the previous item {join(path, prev)!r} outputs {t} ({where}); make them agree")


def _check_state(model: Model, implied: StateInfo, extra: set[str] | None = None) -> Iterator[str]:
    weights = model.weights
    if extra is None:
        extra = {join(p, EXTRA_STATE_KEY) for p, n in walk(model.root) if isinstance(n, Block) and n.extra_state}
    missing = [k for k in [*implied, *extra] if k not in weights and k not in model.extra_state]
    unexpected = [k for k in weights if k not in implied and k not in extra]
    for what, keys in (("missing from model.weights", missing), ("in model.weights but not in the IR", unexpected)):
        if keys:
            listed = ", ".join(keys[:MAX_LISTED]) + (", ..." if len(keys) > MAX_LISTED else "")
            yield (f"state keys {what} ({len(keys)}): {listed}; the IR's parameters/buffers and the weights must "
                   "match (fix the node's state or add/remove the tensors)")
    for key, (shape, dtype) in implied.items():
        t = weights.get(key)
        if t is None:
            continue
        if tuple(t.shape) != shape:
            yield f"{key}: weight has shape {tuple(t.shape)} but the IR implies {shape}; fix the node or the tensor"
        elif dtype is not None and str(t.dtype).removeprefix("torch.") != dtype:
            yield f"{key}: weight has dtype {t.dtype} but the IR records {dtype}; fix the StateSpec or the tensor"


def _check_ties(model: Model, implied: StateInfo) -> Iterator[str]:
    if not model.ties:
        return  # nothing to look up: no walk over a large model
    paths = {p for p, _ in walk(model.root)} | set(implied)
    for alias, target in model.ties:
        for role, p in (("alias", alias), ("target", target)):
            if p not in paths:
                yield (f"tie {alias!r} -> {target!r}: {role} {p!r} is neither a module path nor a state key; "
                       "fix or drop the tie")


def problems(model: Model) -> list[str]:
    """Every invariant the model breaks, as messages (empty when it is valid)."""
    out: list[str] = []
    types, helpers = dict(model.types), model.helper_functions()
    extra: set[str] = set()  # Blocks with get/set_extra_state: their ``_extra_state`` keys (_check_state)
    nodes = list(walk(model.root))  # one walk for the checks and the implied state
    for path, node in nodes:
        out += _check_names(node, path)
        if isinstance(node, Block):
            out += _check_block(node, path, helpers)
            if node.extra_state:
                extra.add(join(path, EXTRA_STATE_KEY))
        if isinstance(node, Chain):
            out += _check_chain(node, path, types)
        if isinstance(node, (SkipConnection, Parallel)):
            out += _check_in_place(node, _where(path), helpers)
    implied = _implied(nodes)
    if model.weights:
        out += _check_state(model, implied, extra)
    out += _check_ties(model, implied)
    out += code_problems(model)
    return out


def verify(model: Model) -> None:
    """Raise ``IRError`` listing every broken invariant (see the module docstring); None if valid."""
    if not isinstance(model, Model):
        raise IRError(f"verify() needs an ir.Model, got {type(model).__name__}")
    found = problems(model)
    if found:
        listed = "\n".join(f"  - {p}" for p in found[:20])
        more = f"\n  ... and {len(found) - 20} more" if len(found) > 20 else ""
        raise IRError(f"model {model.name} failed verification ({len(found)} problem"
                      f"{'s' if len(found) > 1 else ''}):\n{listed}{more}")
