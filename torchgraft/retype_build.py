"""The module tree ``retype`` replays on, built on meta straight from the IR: no code emitted, nothing imported.

The replay (``retype_replay.IRReplay``) interprets every Block, Parallel and SkipConnection and steps
through every plain Chain; what it calls as a whole is a torch.nn layer. So the modules are only read:
parameters and buffers (shape, dtype, persistent or not), constants, children. Each node becomes

- a Primitive: its own ``build()`` (the layer ``model.py`` constructs; a reparametrized one with its
  ``torch.nn.utils`` registration, as ``model.py`` applies it);
- a Chain: an ``nn.Sequential`` of its items, under their names;
- a Container: an ``nn.ModuleList`` / ``nn.ModuleDict``;
- a Block, a Parallel, a SkipConnection: an ``IRBlock`` holder with its children (a Block's state,
  ``StateSpec``, and constants too) and no forward,

all on the meta device, then the model's ties are applied and the frozen parameters frozen, as
``build()`` in ``model.py`` does. Helpers that are import lines or constants are read only by copied
code, so they change nothing here. What genuinely needs code is refused with ``NotFromIR`` saying so
(``retype`` then builds the emitted ``model.py`` and notes it): a forward kept as copied source
(``PySource``), a graph calling a copied helper function, an ``Opaque`` module (its original class).

>>> module = build_from_ir(model)   # doctest: +SKIP
>>> blocker(captured_with_copied_source)   # doctest: +SKIP
'Block at head: its forward is PySource (copied source): the emitted class runs that code'
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

from torchgraft.ir.codecheck import code_problems
from torchgraft.ir.dtypes import build_dtype
from torchgraft.ir.functions import helper_name
from torchgraft.ir.graph import FunctionCall, Graph
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Chain, Container, Node, Opaque, Parallel, PySource, SkipConnection, StateSpec
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join, walk
from torchgraft.ir.values import Const, Seq


class NotFromIR(Exception):
    """The IR build does not apply to this model (``reason`` says why): emit and build ``model.py`` instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IRBlock(nn.Module):
    """A Block's (or a Parallel's, a SkipConnection's) module in the replay: its children, parameters,
    buffers and constants, and no forward (the replay interprets the node; it never calls this module)."""

    def forward(self, *args: object, **kwargs: object) -> object:
        """Never called by the replay: raises."""
        raise NotImplementedError("IRBlock only holds a Block's state for retype's replay; it has no forward")


def blocker(model: Model) -> str | None:
    """Why the IR build does not apply to ``model`` (None when it does): the replay would have to run code
    copied from the model; ties are checked while building.

    >>> blocker(tg.capture(resnet18, (x,)))   # doctest: +SKIP
    """
    for path, node in walk(model.root):
        why = _node_blocker(node)
        if why is not None:
            return f"{type(node).__name__} at {path or '<root>'}: {why}"
    if next(code_problems(model), None) is not None:
        return "the IR holds fields emission refuses (emit raises for it, as before)"
    return None


def _node_blocker(node: Node) -> str | None:
    """Why ``node`` cannot be built and replayed without its emitted code, or None."""
    if isinstance(node, (Primitive, Chain, Container, Parallel, SkipConnection)):
        return None
    if isinstance(node, Opaque):
        return "an opaque module: the replay calls its original class, which model.py imports"
    assert isinstance(node, Block)
    for body in (node.body, node.train_body):
        if isinstance(body, PySource):
            return "its forward is PySource (copied source): the emitted class runs that code"
        if isinstance(body, Opaque):
            return "its forward is Opaque: the replay would call the original class, which model.py imports"
        for g in _graphs(body):
            called = [helper_name(op.target.qualname) for op in g.ops if isinstance(op.target, FunctionCall)]
            copied = sorted({c for c in called if c is not None})
            if copied:
                return f"its forward calls the copied helper function {copied[0]!r}: model.py defines it"
    return _state_blocker(node)


def _graphs(body: Node | None) -> Iterator[Graph]:
    """The Graphs in a Block body: the body itself, or the Graph leaves of a combinator body."""
    if isinstance(body, Graph):
        yield body
    elif isinstance(body, (Chain, Parallel, SkipConnection)):
        for _, part in body.named():
            yield from _graphs(part)


def _state_blocker(block: Block) -> str | None:
    """Why ``block``'s own state, constants or extra-state attributes cannot be built as model.py builds them."""
    for s in block.state:
        dtype = getattr(torch, s.dtype, None)
        if not isinstance(dtype, torch.dtype):
            return f"state {s.name!r} has dtype {s.dtype!r}"
        if s.parameter and not (dtype.is_floating_point or dtype.is_complex):
            return f"parameter {s.name!r} of dtype {s.dtype} (nn.Parameter refuses it)"
    members = {n for n, _ in block.children} | {s.name for s in block.state}
    attrs = [*block.constants, *(block.extra_state.attrs if block.extra_state is not None else ())]
    for name, value in attrs:
        if name in members or not name.isidentifier() or _attr_value(value) is _NO_VALUE:
            return f"attribute {name!r} is not a plain constant of its own"
    return None


def _reparametrized(prim: Primitive) -> bool:
    """Whether ``prim`` or a layer nested in its constructor arguments carries a reparametrization."""
    if prim.reparam:
        return True
    _, kw = prim.ctor()
    return any(isinstance(v, Primitive) and _reparametrized(v) for v in kw.values())


_NO_VALUE = object()


def _attr_value(value: object) -> object:
    """The Python value ``model.py`` assigns for a constant attribute (``_NO_VALUE`` when it is not one)."""
    if isinstance(value, Const):
        return copy.deepcopy(value.value)
    if isinstance(value, Seq):
        items = [_attr_value(a) for a in value.items]
        if any(i is _NO_VALUE for i in items):
            return _NO_VALUE
        return items if value.is_list else tuple(items)
    return _NO_VALUE


def build_from_ir(model: Model, *, share: bool = False) -> nn.Module:
    """``model``'s module tree on meta in eval mode, as ``model.py``'s ``build()`` makes it, for the replay;
    ``NotFromIR`` when it needs the emitted code (``blocker``) or a tie cannot be applied exactly.

    ``share=True`` (a model without ties): equal nodes (``==`` and the same ``repr``, which tells 1 from
    1.0) get one module object, built once, as the replay only reads it; its memo
    (``retype_replay.IRReplay``) then replays each distinct block once per input type. Never use a
    shared tree where modules are told apart by identity (forward hooks per path, ties: ``retype``
    builds without sharing then).

    >>> built = build_from_ir(model, share=not model.ties)   # doctest: +SKIP
    """
    why = blocker(model)
    if why is not None:
        raise NotFromIR(why)
    if share and model.ties:
        raise ValueError("build_from_ir(share=True): the model has ties, which need a module per path")
    root = _module(model.root, {}, {} if share else None)
    for alias, target in model.ties:
        _tie(root, alias, target)
    dtype = build_dtype(model)  # as build() casts it (IRError, as emit refuses, for layers in mixed dtypes)
    if dtype is not None:
        root = root.to(dtype)
    _freeze(root, model)
    return root.eval()


Shared = dict[tuple[object, ...], nn.Module]
"""Equal nodes' one module (``build_from_ir(share=True)``): keyed by type, repr (1 vs 1.0) and the node, and by
``(id(node),)`` for the node object itself."""


def _module(node: Node, made: dict[tuple[type, str], nn.Module], shared: Shared | None = None) -> nn.Module:
    """The module for one node (children built first). ``made``: the first layer built for each
    distinct primitive; an equal one is a deep copy of it (half the cost of constructing it again). A
    reparametrized layer is always built afresh: the legacy ``weight_norm`` holds a computed weight
    that ``copy.deepcopy`` refuses, and a registration is cheap next to a shared object. ``shared``
    (when sharing): the one module of each distinct Block, Parallel, SkipConnection or plain layer."""
    key = None
    if shared is not None and isinstance(node, (Block, Parallel, SkipConnection, Primitive)) and not (
            isinstance(node, Primitive) and _reparametrized(node)):
        found = shared.get((id(node),))  # the very same node object at another path (the tree keeps it alive)
        if found is None:
            key = (type(node), repr(node), node)
            try:
                found = shared.get(key)
            except TypeError:  # a field that cannot be hashed: this node gets a module of its own
                key = None
        if found is not None:
            return found
    mod = _fresh(node, made, shared)
    if key is not None and shared is not None:
        shared[key] = shared[(id(node),)] = mod
    return mod


def _fresh(node: Node, made: dict[tuple[type, str], nn.Module], shared: Shared | None) -> nn.Module:
    """A new module for ``node`` (its children through ``_module``)."""
    if isinstance(node, Primitive):
        key = (type(node), repr(node))  # repr tells 1 from 1.0 and True, which == does not
        first = made.get(key)
        if first is None:
            with torch.device("meta"):  # as model.py is built: layers without a device argument too
                first = node.build()
            if not _reparametrized(node):
                made[key] = first
            return first
        return _copy(first)
    if isinstance(node, Chain):
        return nn.Sequential(OrderedDict((n, _module(c, made, shared)) for n, c in node.named()))
    if isinstance(node, Container):
        if node.kind == "ModuleList":
            return nn.ModuleList([_module(c, made, shared) for _, c in node.items])
        return nn.ModuleDict(OrderedDict((n, _module(c, made, shared)) for n, c in node.items))
    if isinstance(node, (Parallel, SkipConnection)):  # interpreted by the replay: a holder of its children
        mod = IRBlock()
        for name, child in node.named():
            mod.add_module(name, _module(child, made, shared))
        return mod
    assert isinstance(node, Block)  # blocker() let nothing else through
    return _block(node, made, shared)


_PLAIN = (bool, int, float, str, type(None), torch.dtype)


def _plain(value: object) -> bool:
    """A value a copy may share (immutable), or a list of such values (copied as a new list)."""
    return isinstance(value, _PLAIN) or (isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value))


def _copyable(name: str, value: object) -> bool:
    """Whether ``_copy`` copies this attribute exactly: a plain value, an empty table, or the tensor stores
    holding plain tensors and parameters (no attributes of their own)."""
    if name in ("_parameters", "_buffers"):
        return isinstance(value, dict) and all(
            t is None or (type(t) in (torch.Tensor, nn.Parameter) and t.is_contiguous() and not vars(t))
            for t in value.values())
    return _plain(value) or (isinstance(value, (dict, set)) and not value)


def _copy(layer: nn.Module) -> nn.Module:
    """A fresh meta layer equal to ``layer`` (a leaf built by ``build()``, not changed since): its attributes
    copied, parameters and buffers new meta tensors. ``copy.deepcopy`` where ``layer`` holds anything else
    (children, a non-empty hook table, a non-persistent buffer set)."""
    if layer._modules or not all(_copyable(k, v) for k, v in vars(layer).items()):
        return copy.deepcopy(layer)
    new = object.__new__(type(layer))
    state = {k: list(v) if isinstance(v, list) else v if _plain(v) else type(v)() for k, v in vars(layer).items()}
    state["_parameters"] = {n: None if p is None else nn.Parameter(_like(p), p.requires_grad)
                            for n, p in layer._parameters.items()}
    state["_buffers"] = {n: None if b is None else _like(b) for n, b in layer._buffers.items()}
    new.__dict__.update(state)
    return new


def _like(t: torch.Tensor) -> torch.Tensor:
    """A contiguous meta tensor of ``t``'s shape and dtype (``torch.empty_like`` is 15x slower on meta)."""
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def _block(block: Block, made: dict[tuple[type, str], nn.Module], shared: Shared | None = None) -> IRBlock:
    """A holder with ``block``'s state, constants and children, in the order model.py's ``__init__`` sets them."""
    mod = IRBlock()
    for s in block.state:
        tensor = torch.zeros(s.shape, dtype=getattr(torch, s.dtype), device="meta")
        if s.parameter:
            mod.register_parameter(s.name, nn.Parameter(tensor))
        else:
            mod.register_buffer(s.name, tensor, persistent=s.persistent)
    for name, value in (*block.constants, *(block.extra_state.attrs if block.extra_state is not None else ())):
        setattr(mod, name, _attr_value(value))
    for name, child in block.children:
        mod.add_module(name, _module(child, made, shared))
    return mod


def _owner(root: nn.Module, path: str) -> tuple[nn.Module, str, str]:
    """(module holding the last part of ``path``, that name, its kind: module/parameter/buffer)."""
    *parents, name = path.split(".")
    mod = root
    for part in parents:
        sub = mod._modules.get(part)
        if sub is None:
            raise NotFromIR(f"tie path {path!r} does not name a module member")
        mod = sub
    for kind, store in (("module", mod._modules), ("parameter", mod._parameters), ("buffer", mod._buffers)):
        if store.get(name) is not None:
            return mod, name, kind
    raise NotFromIR(f"tie path {path!r} names no module, parameter or buffer")


def _tie(root: nn.Module, alias: str, target: str) -> None:
    """``alias`` made the very object at ``target`` (model.py: ``self.<alias> = self.<target>``)."""
    owner, name, kind = _owner(root, alias)
    source, source_name, source_kind = _owner(root, target)
    if kind != source_kind:
        raise NotFromIR(f"tie {alias!r} -> {target!r} joins a {kind} to a {source_kind}")
    store = {"module": "_modules", "parameter": "_parameters", "buffer": "_buffers"}[kind]
    getattr(owner, store)[name] = getattr(source, store)[source_name]


def _frozen(model: Model) -> Iterator[str]:
    """The parameter keys ``build()`` freezes: ``model.frozen`` and Block state with ``requires_grad=False``."""
    own = [join(p, s.name) for p, n in walk(model.root) if isinstance(n, Block) for s in n.state
           if _frozen_spec(s)]
    yield from dict.fromkeys((*model.frozen, *own))


def _frozen_spec(s: StateSpec) -> bool:
    return s.parameter and not s.requires_grad


def _freeze(root: nn.Module, model: Model) -> None:
    """``requires_grad=False`` on the frozen parameters (keys that name no parameter are skipped, as emitted)."""
    for key in _frozen(model):
        try:
            root.get_parameter(key).requires_grad_(False)
        except AttributeError:
            continue


__all__ = ["IRBlock", "NotFromIR", "blocker", "build_from_ir"]
