"""Module-level IR nodes as constructor expressions, and paths as member accessors."""

from __future__ import annotations

from typing import Callable

from torchgraft.backends.torch.exprs import const_code
from torchgraft.backends.torch.names import is_plain_attr, member
from torchgraft.errors import EmitError
from torchgraft.ir.nodes import (Block, Chain, Combine, CombineKind, Container, Node, Opaque, Parallel, SkipConnection,
                                 module_children)
from torchgraft.ir.primitives import Primitive

WIDTH = 88


def fmt_call(head: str, args: list[str], indent: int, tail: str = ")") -> str:
    """``head(a, b)`` on one line when it fits, else one argument per line."""
    one = f"{head}{', '.join(args)}{tail}"
    if indent + len(one) <= WIDTH and "\n" not in one:
        return one
    body = "".join(f"    {a.replace(chr(10), chr(10) + '    ')},\n" for a in args)
    return f"{head}\n{body}{tail}"


def prim_expr(p: Primitive) -> str:
    """``nn.Conv2d(3, 16, kernel_size=3, padding=1)``."""
    pos, kw = p.ctor()
    args = [const_code(v) if not isinstance(v, tuple) else _tuple(v) for v in pos]
    args += [f"{k}={_tuple(v) if isinstance(v, tuple) else const_code(v)}" for k, v in kw.items()]
    return f"nn.{p.op}({', '.join(args)})"


def _tuple(v: tuple[object, ...]) -> str:
    items = [_tuple(x) if isinstance(x, tuple) else const_code(x) for x in v]
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def module_expr(node: Node, class_of: Callable[[Node, str], str], path: str, indent: int) -> str:
    """The constructor expression building ``node`` (``class_of`` names Block classes)."""
    if isinstance(node, Primitive):
        return prim_expr(node)
    if isinstance(node, Block):
        return class_of(node, path)
    if isinstance(node, (Chain, Container, Parallel, SkipConnection)):
        kids = module_children(node)
        sub = [(n, module_expr(c, class_of, f"{path}.{n}" if path else n, indent + 4)) for n, c in kids]
        if isinstance(node, SkipConnection):
            return fmt_call("SkipConnection(", [sub[0][1]] + _combine_args(node.combine), indent)
        if isinstance(node, Parallel):
            return fmt_call("Parallel(", [fmt_call("[", [e for _, e in sub], indent + 4, "]")]
                            + _combine_args(node.combine), indent)
        if isinstance(node, Container) and node.kind == "ModuleDict":
            return fmt_call("nn.ModuleDict({", [f"{n!r}: {e}" for n, e in sub], indent, "})")
        if isinstance(node, Container):
            return fmt_call("nn.ModuleList([", [e for _, e in sub], indent, "])")
        if [n for n, _ in sub] == [str(i) for i in range(len(sub))]:
            return fmt_call("nn.Sequential(", [e for _, e in sub], indent)
        return fmt_call("nn.Sequential(OrderedDict([", [f"({n!r}, {e})" for n, e in sub], indent, "]))")
    if isinstance(node, Opaque):
        if node.ctor is None:
            raise EmitError(f"module at {path or '<root>'} ({node.cls}) is opaque ({node.reason}) and its "
                            "constructor arguments could not be recovered from its attributes, so model.py "
                            "cannot rebuild it. Make its forward traceable, or replace it with a pass.")
        return class_of(node, path)
    raise EmitError(f"cannot construct {type(node).__name__} at {path or '<root>'}")


def _combine_args(c: Combine) -> list[str]:
    kind = c.kind.value if isinstance(c.kind, CombineKind) else str(c.kind)
    return [f"combine={kind!r}"] + ([f"dim={c.dim}"] if kind == "cat" else [])


def container_kind(node: Node) -> str | None:
    """How members of ``node`` are indexed: Sequential/ModuleList by int, ModuleDict by key."""
    if isinstance(node, (Chain, Parallel)):
        return "Sequential"
    if isinstance(node, Container):
        return node.kind
    return None


def accessor(root: Node, base: str = "self") -> Callable[[str], str]:
    """A function turning a dotted path below ``root`` into code reaching it (modules or state)."""

    def reach(path: str) -> str:
        code, node = base, root
        parts = path.split(".")
        for i, part in enumerate(parts):
            kids = dict(module_children(node))
            if part in kids:
                code = member(code, part, container_kind(node))
                node = kids[part]
                continue
            if i != len(parts) - 1:
                raise EmitError(f"path {path!r} does not exist below this module (no {part!r})")
            if is_plain_attr(part):
                return f"{code}.{part}"
            store = "_buffers" if _is_buffer(node, part) else "_parameters"
            return f"{code}.{store}[{part!r}]"
        return code

    return reach


def _is_buffer(node: Node, name: str) -> bool:
    if isinstance(node, Block):
        return any(s.name == name and not s.parameter for s in node.state)
    if isinstance(node, Primitive):
        return any(n == name and not is_param for n, _, is_param in node.state())
    return False
