"""The IR runs itself: a Block's body (a Graph, or a combinator body run as its lowered Graph), a Chain,
a Parallel or a SkipConnection, executed on real (or meta) tensors, recording each value's type.

``Interpreter.run_node`` steps into a Block captured by fx or the fallback trace and into a plain
``nn.Sequential`` Chain; every other module is called as it is (the original's, in capture). A
subclass that knows its modules have no forward of their own (``retype``'s replay over modules built
from the IR) steps into every Block, Parallel and SkipConnection: ``run`` and ``run_combinator`` do
the work, and joins run as the ops ``ir.combine.combine_ops`` writes, so a join means here what it
means in emitted code. One run types every op of every interpreted block. No tracing (no
``torch.fx``), no code emitted.

>>> Interpreter({}, {}).run_node(model.root, module, "", (x,), {})   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from torchgraft.errors import CaptureError
from torchgraft.ir.combine import Combine, combine_ops, skip_operands
from torchgraft.ir.functions import helper_name, resolve
from torchgraft.ir.graph import ChildCall, FunctionCall, GetAttr, Graph, Guard, InputKind, MethodCall, Op, PrimCall
from torchgraft.ir.lower import block_graph
from torchgraft.ir.nodes import Block, Chain, Node, Parallel, SkipConnection, module_children
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.types import ValueType, type_of
from torchgraft.ir.values import Arg, ByMode, Const, DictArg, Ref, Seq, Slice, Training


def child_node(node: Node, path: str) -> Node:
    """The IR node at a dotted path below ``node``."""
    for part in path.split("."):
        node = dict(module_children(node))[part]
    return node


def call_prim(op: Op, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call a stateless primitive functionally (``F.relu(x, inplace=...)``)."""
    assert isinstance(op.target, PrimCall)
    return _stateless(op.target.prim)(*args, **kwargs)


@functools.lru_cache(maxsize=1024)
def _stateless(prim: Primitive) -> nn.Module:
    """The module of a stateless primitive (activations hold no state and ignore the mode), built once."""
    return prim.build()


class Interpreter:
    """Executes IR graphs against an original module tree; collects types per block path."""

    def __init__(self, helpers: dict[str, Callable[..., Any]], symbols: dict[int, str],
                 constants: dict[str, torch.Tensor] | None = None) -> None:
        self.helpers = helpers
        self.symbols = symbols
        self.constants = constants or {}
        self.types: dict[str, dict[str, ValueType]] = {}
        self.meta_is: str | None = None  # the device meta tensors stand for, in a meta replay
        self.module_types: dict[str, ValueType] = {}

    def _value(self, arg: Arg, env: dict[str, Any], mod: nn.Module) -> Any:
        if isinstance(arg, Ref):
            return env[arg.name]
        if isinstance(arg, Const):
            return arg.value
        if isinstance(arg, Seq):
            items = [self._value(a, env, mod) for a in arg.items]
            return items if arg.is_list else tuple(items)
        if isinstance(arg, Slice):
            return slice(*(self._value(p, env, mod) for p in (arg.start, arg.stop, arg.step)))
        if isinstance(arg, Training):
            return mod.training
        if isinstance(arg, ByMode):
            return arg.train.value if mod.training else arg.eval.value
        if isinstance(arg, DictArg):
            return {k: self._value(v, env, mod) for k, v in arg.items}
        raise TypeError(arg)

    def _fn(self, qualname: str) -> Callable[..., Any]:
        helper = helper_name(qualname)
        if helper is not None:
            return self.helpers[helper]
        return resolve(qualname)

    def run(self, block: Block, mod: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``block`` (captured from ``mod``) on the given inputs."""
        body = block.train_body if (mod.training and block.train_body is not None) else block.body
        body = block_graph(block, body)  # a structural body (ir.stored) runs as its lowered Graph
        env = self._bind(body, args, kwargs)
        seen = self.types.setdefault(path, {})
        for name, value in env.items():
            seen.setdefault(name, type_of(value, self.symbols, self.meta_is))
        for op in body.ops:
            a = [self._value(x, env, mod) for x in op.args]
            kw = {k: self._value(v, env, mod) for k, v in op.kwargs}
            try:
                env[op.name] = self._call(op, block, mod, path, a, kw)
            except CaptureError:
                raise
            except Exception as e:
                where = path or "<root>"
                raise CaptureError(f"{where}: op {op.name!r} failed: {type(e).__name__}: {e}", path) from e
            seen.setdefault(op.name, type_of(env[op.name], self.symbols, self.meta_is))
        return self._value(body.output, env, mod)

    def run_node(self, node: Node, mod: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run any module-level node: Blocks are interpreted, Chains stepped through, the rest called."""
        if isinstance(node, Block) and node.method in ("fx", "trace"):
            out = self.run(node, mod, path, args, kwargs)
        elif isinstance(node, Chain) and type(mod).forward is nn.Sequential.forward and len(args) == 1 and not kwargs:
            out = args[0]
            for name, item in node.named():
                sub = mod._modules[name]
                assert sub is not None
                out = self.run_node(item, sub, f"{path}.{name}" if path else name, (out,), {})
        else:
            try:
                out = self.call_module(node, mod, args, kwargs)
            except Exception as e:
                raise CaptureError(f"{path or '<root>'} ({type(mod).__name__}) failed: {type(e).__name__}: {e}",
                                   path) from e
        self.module_types.setdefault(path, type_of(out, self.symbols, self.meta_is))
        return out

    def run_combinator(self, node: Parallel | SkipConnection, mod: nn.Module, path: str, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        """Run a module-level Parallel (its branches on one input, joined) or SkipConnection (``combine(x,
        body(x))``) on ``mod``'s children, each through ``run_node`` under its path."""
        if len(args) != 1 or kwargs:
            raise CaptureError(f"{path or '<root>'}: a {type(node).__name__} takes one input, got {len(args)} "
                               f"positional and {sorted(kwargs)} keyword arguments", path)
        x, values = args[0], []
        for name, child in node.named():
            sub = mod._modules[name]
            assert sub is not None
            values.append(self.run_node(child, sub, f"{path}.{name}" if path else name, (x,), {}))
        return self.join(node.combine, skip_operands(node.combine, x, values[0]) if isinstance(node, SkipConnection)
                         else values, mod, path)

    def join(self, how: Combine, values: list[Any], mod: nn.Module, path: str) -> Any:
        """``how`` over ``values``: the ops ``combine_ops`` writes for it, each run as ``call_function``."""
        names = [f"v{i}" for i in range(len(values))]
        fresh = iter(range(len(values), 2 * len(values) + 2))
        ops, out = combine_ops(how, names, lambda base: f"v{next(fresh)}")
        env: dict[str, Any] = dict(zip(names, values))
        for op in ops:
            assert isinstance(op.target, FunctionCall)
            try:
                env[op.name] = self.call_function(op.target.qualname, [self._value(a, env, mod) for a in op.args],
                                                  {k: self._value(v, env, mod) for k, v in op.kwargs})
            except Exception as e:
                raise CaptureError(f"{path or '<root>'}: its combine {how} ({op.target.qualname}) failed: "
                                   f"{type(e).__name__}: {e}", path) from e
        return env[out]

    def call_module(self, node: Node, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call a module that is not interpreted (a leaf layer, an opaque block): as it is."""
        return mod(*args, **kwargs)

    def attr(self, value: Any) -> Any:
        """A parameter, buffer or constant the graph reads (``self.weight``)."""
        return value

    def call_function(self, qualname: str, a: list[Any], kw: dict[str, Any]) -> Any:
        """A free function call in a graph (``torch.flatten(x, 1)``, ``operator.add``)."""
        return self._fn(qualname)(*a, **kw)

    def call_method(self, name: str, a: list[Any], kw: dict[str, Any]) -> Any:
        """A method call in a graph (``x.view(n, -1)``)."""
        return getattr(a[0], name)(*a[1:], **kw)

    def check(self, guard: Guard, ok: Any) -> None:
        """A guard: raise its ValueError when the assumption does not hold for these inputs."""
        if not ok:
            raise ValueError(guard.message)

    def call_primitive(self, op: Op, a: list[Any], kw: dict[str, Any]) -> Any:
        """A primitive called functionally (``F.relu(x)``)."""
        return call_prim(op, a, kw)

    def _call(self, op: Op, block: Block, mod: nn.Module, path: str, a: list[Any], kw: dict[str, Any]) -> Any:
        t = op.target
        if isinstance(t, ChildCall):
            sub = mod.get_submodule(t.path)
            node = child_node(block, t.path)
            return self.run_node(node, sub, f"{path}.{t.path}" if path else t.path, tuple(a), kw)
        if isinstance(t, GetAttr):
            full = f"{path}.{t.path}" if path else t.path
            if full in self.constants:
                return self.attr(self.constants[full])
            obj: Any = mod
            for part in t.path.split("."):
                obj = getattr(obj, part)
            return self.attr(obj)
        if isinstance(t, MethodCall):
            return self.call_method(t.name, a, kw)
        if isinstance(t, PrimCall):
            return self.call_primitive(op, a, kw)
        if isinstance(t, Guard):
            return self.check(t, a[0])
        assert isinstance(t, FunctionCall)
        return self.call_function(t.qualname, a, kw)

    @staticmethod
    def _bind(g: Graph, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        env: dict[str, Any] = {}
        rest = list(args)
        for inp in g.inputs:
            if inp.kind is InputKind.VAR_POSITIONAL:
                env[inp.name], rest = tuple(rest), []
            elif inp.kind is InputKind.VAR_KEYWORD:
                env[inp.name] = {k: v for k, v in kwargs.items() if k not in env}
            elif rest and inp.kind is InputKind.POSITIONAL:
                env[inp.name] = rest.pop(0)
            elif inp.name in kwargs:
                env[inp.name] = kwargs[inp.name]
            elif inp.default is not None:
                env[inp.name] = inp.default.value
            else:
                raise CaptureError(f"missing argument {inp.name!r}")
        return env


def typed_block(block: Block, types: dict[str, dict[str, ValueType]], path: str) -> Block:
    """``block`` with op and input types filled from an interpreter run (recursing into children)."""
    seen = types.get(path, {})

    def fill(g: Node | None) -> Node | None:
        if not isinstance(g, Graph):
            return g
        inputs = tuple(replace(i, type=seen[i.name]) if i.name in seen and i.type != seen[i.name] else i
                       for i in g.inputs)
        ops = tuple(replace(o, type=seen[o.name]) if o.name in seen and o.type != seen[o.name] else o for o in g.ops)
        if all(a is b for a, b in zip(inputs, g.inputs)) and all(a is b for a, b in zip(ops, g.ops)):
            return g  # every type as recorded: the same graph (no copy, no re-validation)
        return Graph(inputs, ops, g.output)

    body, train = fill(block.body), fill(block.train_body)
    if body is block.body and train is block.train_body:
        return block
    return replace(block, body=body, train_body=train)  # type: ignore[arg-type]


__all__ = ["Interpreter", "child_node", "typed_block", "operator", "torch"]
