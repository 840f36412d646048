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

Checks that read one node alone (its names, a Block's forward, its class, a join) are remembered for the
nodes they found clean, by identity (``ir.checkmemo``): verifying the model a pass returned re-checks only
the nodes the pass rebuilt. What depends on paths (types along Chains, state keys, ties) and every
``Opaque`` are checked each time; a node with a problem is never remembered.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torchgraft.errors import IRError
from torchgraft.ir import checkmemo
from torchgraft.ir.aliasing import ChildLookup, Fresh, node_fresh
from torchgraft.ir.codecheck import body_code, helper_names, helper_problems, node_code_problems
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


PrimKeys = tuple[tuple[str, tuple[tuple[int, ...], None]], ...]
"""A primitive's state as ``implied_state`` entries: (name, (shape, None))."""


def _prim_keys(prim: Primitive, path: str, memo: dict[int, Any] | None) -> PrimKeys:
    """``_prim_state`` as ``implied_state`` entries, remembered by the primitive's identity in ``memo`` (it is
    frozen, and its state a function of its fields)."""
    hit = memo.get(id(prim)) if memo is not None else None
    if hit is not None and hit[0] is prim:
        return hit[1]  # type: ignore[no-any-return]
    keys = tuple((n, (tuple(s), None)) for n, s, _ in _prim_state(prim, path))
    if memo is not None:
        memo[id(prim)] = (prim, keys)
    return keys


def implied_state(root: Node) -> StateInfo:
    """The state_dict keys (with shapes, dtypes) the IR tree implies, in module order."""
    return _implied(walk(root))


def _implied(nodes: Iterable[tuple[str, Node]], memo: dict[int, Any] | None = None) -> StateInfo:
    """``implied_state`` of the (path, node) pairs of a walk (``memo``: see ``_prim_keys``)."""
    out: StateInfo = {}
    for path, node in nodes:
        if isinstance(node, Primitive):
            for n, v in _prim_keys(node, path, memo):
                out[f"{path}.{n}" if path else n] = v
        elif isinstance(node, Block):
            if node.state:
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


def _calls(node: Node) -> tuple[str, ...] | list[str]:
    if isinstance(node, ChildRef):
        return (node.path,)
    if isinstance(node, Graph):
        return [op.target.path for op in node.ops if isinstance(op.target, ChildCall)]
    return ()


_REF, _PRIM, _CHAIN, _JOIN, _GRAPH, _OTHER = range(1, 7)  # never 0: ``_KINDS.get(t) or _kind(x)``
_KINDS: dict[type, int] = {}


def _kind(node: object) -> int:
    """What ``_check_block`` does with a body node, by its class (looked up once per class)."""
    kind = _KINDS.get(type(node))
    if kind is None:
        cls = type(node)
        kind = (_REF if issubclass(cls, ChildRef) else _PRIM if issubclass(cls, Primitive)
                else _CHAIN if issubclass(cls, Chain) else _JOIN if issubclass(cls, (Parallel, SkipConnection))
                else _GRAPH if issubclass(cls, Graph) else _OTHER)
        _KINDS[cls] = kind
    return kind


def _check_block(block: Block, path: str, helpers: Mapping[str, Helper], names: frozenset[str] | None = None,
                 code: list[str] | None = None, memo: dict[int, Any] | None = None) -> list[str]:
    """The problems of a Block's forward bodies (calls, graphs, joins, inline primitives). With ``code``, the
    code problems of its bodies (``codecheck.body_code``, ``names``: the helper names) are added to it, in the
    same walk of each body; ``memo``: see ``_prim_keys``."""
    out: list[str] = []
    where, cls = path or "<root>", ""  # cls: the Block's name in messages, made when one is written
    kids: dict[str, Node] | None = None
    helper_set = names or frozenset()
    for body in (block.body, block.train_body):
        # (node, in scope): verify looks at the body and, through combinators, their items; the code check at
        # everything below the body (a ``walk``: also inside a Block or Container there)
        stack: list[tuple[Node, bool]] = [] if body is None else [(body, True)]
        while stack:
            item, scoped = stack.pop()
            node: Any = item  # its class is ``kind``
            kind = _KINDS.get(type(node))
            if kind is None:
                kind = _kind(node)
            refs: tuple[str, ...] | list[str] = ()
            if kind == _CHAIN:
                stack.extend([(k, scoped) for k in reversed(node.items)])
                continue
            if kind == _REF:
                refs = (node.path,)
            elif kind == _GRAPH:
                if code is not None:
                    code += body_code(node, where, helper_set)
                refs = _calls(node)
            elif kind == _JOIN:
                if code is not None:
                    code += body_code(node, where, helper_set)
                stack.extend([(k, scoped) for _, k in reversed(module_children(node))])
            elif kind == _OTHER and code is not None:  # a Block, a Container: only the code check looks inside
                stack.extend([(k, False) for _, k in reversed(module_children(node))])
            if not scoped:
                continue
            for ref in refs:
                if kids is None:
                    kids = dict(block.children)
                    cls = f"Block<{block.cls.name}>"
                target, rest = (kids[ref], "") if ref in kids else _resolve(block, ref)
                if rest:
                    out.append(f"{where}: {cls} calls child {ref!r}, which does not exist (children: "
                               f"{[n for n, _ in block.children]}); add the child or fix the call's path")
                elif isinstance(target, Container):
                    out.append(f"{where}: {cls} calls {ref!r}, a {target.kind}, which has no forward; call one "
                               "of its items")
            if kind == _GRAPH:
                out += _check_graph(node, block, where, f"Block<{block.cls.name}>")
            elif kind == _JOIN:
                if node.combine.in_place:
                    out += _check_in_place(node, where, helpers, functools.partial(node_at, block))
            elif kind == _PRIM and _prim_keys(node, path, memo):
                cls = f"Block<{block.cls.name}>"
                out.append(f"{where}: the forward of {cls} uses {node.label()} inline, but it has state; make it a "
                           "child of the block and refer to it with ChildRef")
    return out


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


def _check_names(node: Node, path: str) -> list[str]:
    if isinstance(node, Block):
        names = [n for n, _ in node.children]
        if node.state:
            names += [s.name for s in node.state]
        if node.constants:
            names += [n for n, _ in node.constants]
    else:
        names = [n for n, _ in module_children(node)]
        if not names:
            return []
    out = []
    if len(set(names)) < len(names):
        dup = sorted(n for n, k in Counter(names).items() if k > 1)
        out.append(f"{_where(path)}: member names {dup} are used more than once; rename them so each is unique")
    for n in names:
        if not n or "." in n:
            bad = [n for n in names if not n or "." in n]
            out.append(f"{_where(path)}: member names {bad} are empty or contain '.'; state_dict keys need plain "
                       "names")
            break
    return out


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


def _check_chain(chain: Chain, path: str, types: Mapping[str, ValueType]) -> Iterator[str]:
    items, names = chain.items, chain.names
    for i in range(1, len(items)):
        item = items[i]
        need = _expected_dims(item) if isinstance(item, Primitive) else None  # only primitives are checkable
        if need is None:
            continue
        prev, name = names[i - 1], names[i]
        t = types.get(join(path, prev))
        if isinstance(t, TensorType) and _mismatch(t, need[2], need[1]):
            what, size, where = need
            yield (f"{join(path, name)}: {item.label() if isinstance(item, Primitive) else name} has {what}={size} "
                   f"but the previous item {join(path, prev)!r} outputs {t} ({where}); make them agree")


class _Types(Mapping[str, ValueType]):
    """``dict(model.types)``, built on the first lookup (a model with no checkable Chain item needs none)."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self._types: dict[str, ValueType] | None = None

    def _get(self) -> dict[str, ValueType]:
        if self._types is None:
            self._types = dict(self._model.types)
        return self._types

    def __getitem__(self, key: str) -> ValueType:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _check_state(model: Model, implied: StateInfo, extra: set[str] | None = None) -> Iterator[str]:
    weights = model.weights
    if extra is None:
        extra = {join(p, EXTRA_STATE_KEY) for p, n in walk(model.root) if isinstance(n, Block) and n.extra_state}
    if not extra and weights.keys() == implied.keys():  # the usual case, in one comparison of key sets
        missing, unexpected = [], []
    else:
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
        if t.shape != shape and tuple(t.shape) != shape:  # (a torch.Size equals the tuple of its sizes)
            yield f"{key}: weight has shape {tuple(t.shape)} but the IR implies {shape}; fix the node or the tensor"
        elif dtype is not None and str(t.dtype).removeprefix("torch.") != dtype:
            yield f"{key}: weight has dtype {t.dtype} but the IR records {dtype}; fix the StateSpec or the tensor"


def _check_ties(model: Model, implied: StateInfo, paths: Iterable[str] | None = None) -> Iterator[str]:
    if not model.ties:
        return  # nothing to look up: no walk over a large model
    known = set(p for p, _ in walk(model.root)) if paths is None else set(paths)
    known |= set(implied)
    for alias, target in model.ties:
        for role, p in (("alias", alias), ("target", target)):
            if p not in known:
                yield (f"tie {alias!r} -> {target!r}: {role} {p!r} is neither a module path nor a state key; "
                       "fix or drop the tie")


_LOCAL = (Block, Chain, Parallel, SkipConnection, Container, Opaque)
"""Module-level nodes with checks of their own fields (``_local``); the others have none."""


def _plain_body(block: Block, body: Node | None, path: str, memo: dict[int, Any] | None) -> bool:
    """True when ``body`` is certainly clean for ``_check_block`` and ``codecheck.body_code``: None, a
    ChildRef to a child, or a Chain of such refs and primitives without state (the usual captured forward).
    False means "not shown here": ``_check_block`` then looks at it in full."""
    if body is None:
        return True
    kinds = _KINDS
    items = body.items if (kinds.get(type(body)) or _kind(body)) == _CHAIN else (body,)  # type: ignore[union-attr]
    kids: dict[str, Node] | None = None
    for item in items:
        kind = kinds.get(type(item)) or _kind(item)
        if kind == _REF:
            if kids is None:
                kids = dict(block.children)
            target = kids.get(item.path)  # type: ignore[union-attr]
            if target is None or isinstance(target, Container):
                return False
        elif kind != _PRIM:
            return False
        elif memo is not None and (hit := memo.get(id(item))) is not None and hit[0] is item:
            if hit[1]:
                return False
        elif _prim_keys(item, path, memo):  # type: ignore[arg-type]
            return False
    return True


def _members_clean(block: Block, memo: dict[int, Any] | None) -> bool:
    """True when ``block``'s members (children, state, constants: their names) and class were found clean
    before, the very same objects (a pass that rewrites forwards keeps them: ``traverse.with_bodies``)."""
    if memo is None:
        return False
    hit = memo.get(id(block.children))
    return hit is not None and hit[0] is block.children and hit[1] is block.state and \
        hit[2] is block.constants and hit[3] is block.cls


def _local(node: Node, path: str, helpers: Mapping[str, Helper], names: frozenset[str],
           code: list[str], memo: dict[int, Any] | None, members: dict[int, Any] | None = None) -> list[str]:
    """The checks that read ``node`` alone (and the model's helpers): its member names, a Block's forward,
    an in-place join; the code checks (``ir.codecheck``) go to ``code``. Never ``model.types``/``weights``.
    ``memo``: see ``_prim_keys``; ``members``: see ``_members_clean``."""
    if isinstance(node, Block):
        out: list[str] = []
        if not _members_clean(node, members):
            out = _check_names(node, path)
            found = node_code_problems(node, _where(path), names, bodies=False)  # its bodies: below
            if not out and not found and members is not None:
                members[id(node.children)] = (node.children, node.state, node.constants, node.cls)
            code += found
        if not (_plain_body(node, node.body, path, memo) and (
                node.train_body is None or _plain_body(node, node.train_body, path, memo))):
            out += _check_block(node, path, helpers, names, code, memo)
        return out
    out = _check_names(node, path)
    code += node_code_problems(node, _where(path), names)
    if isinstance(node, (SkipConnection, Parallel)):
        out += _check_in_place(node, _where(path), helpers)
    return out


def _leaf_children(kids: tuple[tuple[str, Node], ...], states: dict[int, Any] | None,
                   leaves: dict[int, Any]) -> None:
    """Remember ``kids`` (a Block's children) when all are primitives whose state lists: ``id(kids) -> (kids,
    their names, their implied_state entries relative to the Block)``. A walk visits such children right after
    their Block, and they have nothing to check but their state: ``problems`` then takes the entries from here
    instead of visiting them (the same paths and entries, in the same order)."""
    entries: list[tuple[str, tuple[tuple[int, ...], None]]] = []
    for name, child in kids:
        if not isinstance(child, Primitive):
            return
        try:
            keys = _prim_keys(child, name, states)
        except IRError:
            return  # the walk visits it, and reports it there
        entries += [(f"{name}.{n}", v) for n, v in keys]
    leaves[id(kids)] = (kids, tuple(n for n, _ in kids), tuple(entries))


def problems(model: Model) -> list[str]:
    """Every invariant the model breaks, as messages (empty when it is valid).

    One walk does every check. The checks that read one node alone (and the model's helpers) are skipped for a
    node they passed before, the very same object (``ir.checkmemo``): after a pass, only the nodes it
    rebuilt are checked again. What depends on paths (types along Chains, state keys, ties) is checked every
    time, and so is every ``Opaque`` (its class check reads ``sys.modules``).
    """
    out: list[str] = []
    code = helper_problems(model)  # what ``code_problems`` finds; listed last, as it always was
    helpers, names = model.helper_functions(), helper_names(model)
    clean = checkmemo.tables(("verify", model.helpers))
    states = checkmemo.tables("prim-state")  # id(primitive) -> (primitive, its implied_state entries)
    members = checkmemo.tables("block-members")  # see _members_clean
    leaves = checkmemo.tables("leaf-children")  # see _leaf_children
    types = _Types(model)
    extra: set[str] = set()  # Blocks with get/set_extra_state: their ``_extra_state`` keys (_check_state)
    implied: StateInfo = {}  # ``implied_state``, built in the same walk
    failed: Exception | None = None  # from listing a node's state: raised after the walk, as _implied would
    paths: list[str] | None = [] if model.ties else None
    stack: list[tuple[str, Node]] = [("", model.root)]
    while stack:  # ``walk``, inlined: parents first, children left to right
        path, node = stack.pop()
        if paths is not None:
            paths.append(path)
        if isinstance(node, Primitive):  # a leaf (the most common node)
            if failed is None:
                hit = states.get(id(node)) if states is not None else None
                try:
                    keys = hit[1] if hit is not None and hit[0] is node else _prim_keys(node, path, states)
                except IRError as e:
                    failed = e
                    continue
                for n, v in keys:
                    implied[f"{path}.{n}" if path else n] = v
            continue
        kids = module_children(node)
        seen = False
        leafy = leaves.get(id(kids)) if leaves is not None and kids and isinstance(node, Block) else None
        if leafy is not None and leafy[0] is not kids:
            leafy = None
        if kids and leafy is None:
            stack.extend([(f"{path}.{n}" if path else n, c) for n, c in reversed(kids)])
            # members seen before (a pass rebuilt the Block around them): its children are worth remembering
            seen = leaves is not None and isinstance(node, Block) and _members_clean(node, members)
        if isinstance(node, _LOCAL) and (clean is None or clean.get(id(node)) is not node):
            listed = len(code)
            found = _local(node, path, helpers, names, code, states, members)  # code problems: onto ``code``
            if found:
                out += found
            elif len(code) == listed and clean is not None and not isinstance(node, Opaque):
                clean[id(node)] = node
        if isinstance(node, Block):
            if node.extra_state:
                extra.add(join(path, EXTRA_STATE_KEY))
            if node.state and failed is None:
                try:
                    implied.update(_implied(((path, node),)))
                except Exception as e:  # noqa: BLE001 - raised after the walk, where _implied raised it
                    failed = e
            if leafy is not None:  # its children, all primitives, visited here (the walk would visit them next)
                prefix = f"{path}." if path else ""
                if paths is not None:
                    paths += [prefix + r for r in leafy[1]]
                if failed is None:
                    for r, v in leafy[2]:
                        implied[prefix + r] = v
            elif seen and leaves is not None:
                _leaf_children(kids, states, leaves)
        elif isinstance(node, Chain):
            out += _check_chain(node, path, types)
        elif isinstance(node, Opaque) and failed is None:
            try:
                implied.update(_implied(((path, node),)))
            except Exception as e:  # noqa: BLE001 - as above
                failed = e
    if failed is not None:
        raise failed
    if model.weights:
        out += _check_state(model, implied, extra)
    out += _check_ties(model, implied, paths)
    out += code
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
