"""Module-level IR nodes as constructor expressions, and paths as member accessors."""

from __future__ import annotations

import itertools
import keyword
import re
from collections.abc import Callable, Mapping

from torchgraft.backends.torch.ctor import Call, CExpr, Guarded, Items, Lit, Param, Raw, node_expr, prim_call
from torchgraft.backends.torch.exprs import const_code
from torchgraft.backends.torch.hoist import hoist
from torchgraft.backends.torch.names import is_plain_attr, member, str_lit
from torchgraft.errors import EmitError
from torchgraft.ir.nodes import Block, Chain, Container, Node, Parallel, module_children
from torchgraft.ir.primitives import Primitive

WIDTH = 88
_KEY_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*?(?=\d+$)")


def fmt_call(head: str, args: list[str], indent: int, tail: str = ")") -> str:
    """``head(a, b)`` on one line when it fits, else one argument per line."""
    one = f"{head}{', '.join(args)}{tail}"
    if indent + len(one) <= WIDTH and "\n" not in one:
        return one
    inner = ", ".join(args)
    if indent + 4 + len(inner) <= WIDTH and "\n" not in inner and not inner.startswith("*"):
        return f"{head}\n    {inner}\n{tail}"
    body = "".join(f"    {a.replace(chr(10), chr(10) + '    ')},\n" for a in args)
    return f"{head}\n{body}{tail}"


def lit_code(v: object) -> str:
    """A literal: constants as ``const_code`` writes them, tuples and lists item by item."""
    if isinstance(v, tuple):
        items = [lit_code(x) for x in v]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if isinstance(v, list):
        return f"[{', '.join(lit_code(x) for x in v)}]"
    return const_code(v)


def prim_expr(p: Primitive) -> str:
    """``nn.Conv2d(3, 16, kernel_size=3, padding=1)``."""
    return render(prim_call(p), {}, 0)


def render(e: CExpr, names: Mapping[int, str], indent: int, head: str = "") -> str:
    """Code for a constructor expression; ``Param(i)`` is written ``names[i]``; ``head`` goes in front.

    An expression nested too deeply for Python's parser (a 200-deep ``nn.Sequential`` nest)
    comes back as statements building its inner parts first (``inner_1 = ...``, see hoist.py),
    then ``head`` and the rest: callers write the text where a statement goes.
    """
    parts, e = hoist(e, names.values())
    lines = [_render(part, names, indent, f"{name} = ") for name, part in parts]
    return "\n".join([*lines, _render(e, names, indent, head)])


def _render(e: CExpr, names: Mapping[int, str], indent: int, head: str = "") -> str:
    if isinstance(e, Param):
        return head + names[e.index]
    if isinstance(e, Lit):
        return head + lit_code(e.value)
    if isinstance(e, Raw):
        return head + e.text
    if isinstance(e, Items):
        return _render_items(e, names, indent, head)
    if isinstance(e, Guarded):
        test = f"{names[e.flag]} is not None" if e.when_set else names[e.flag]
        inner = _render(e.expr, names, indent)
        listed = inner if isinstance(e.expr, Items) and e.expr.kind == "list" else f"[{inner}]"  # all or none
        return f"{head}*({listed} if {test} else [])"
    callee = names[e.head.index] if isinstance(e.head, Param) else e.head
    return fmt_call(f"{head}{callee}(", _call_args(e, names, indent + 4), indent)


def _call_args(e: Call, names: Mapping[int, str], indent: int) -> list[str]:
    defaults = dict(e.defaults)
    args = list(e.args)
    while args and len(args) <= len(e.arg_names) and defaults.get(e.arg_names[len(args) - 1]) == args[-1]:
        args.pop()
    out = [_render(a, names, indent) for a in args]
    return out + [_render(v, names, indent, f"{k}=") for k, v in e.kwargs if defaults.get(k) != v]


def _runs(items: list[str], indent: int, head: str, tail: str) -> list[str]:
    """Items, with runs of identical ones written ``*[item for _ in range(n)]`` when that reads better."""
    one = f"{head}{', '.join(items)}{tail}"
    short = indent + len(one) <= WIDTH and "\n" not in one
    out: list[str] = []
    for item, group in itertools.groupby(items):
        n = len(list(group))
        if not item.startswith("*") and (n >= 3 or (n == 2 and not short)):
            text = f"*[{item} for _ in range({n})]"
            if indent + 5 + len(text) > WIDTH or "\n" in item:
                text = f"*[\n    {item.replace(chr(10), chr(10) + '    ')}\n    for _ in range({n})\n]"
            out.append(text)
        else:
            out += [item] * n
    return out


def _render_items(e: Items, names: Mapping[int, str], indent: int, head: str) -> str:
    sub = [_render(i, names, indent + 4) for i in e.items]
    pairs = list(zip(e.keys, sub, strict=True))
    if e.kind == "ModuleDict":
        return fmt_call(f"{head}nn.ModuleDict({{", [f"{str_lit(k)}: {x}" for k, x in pairs], indent, "})")
    opening = {"ModuleList": "nn.ModuleList([", "list": "["}.get(e.kind, "nn.Sequential(")
    closing = {"ModuleList": "])", "list": "]"}.get(e.kind, ")")
    if e.kind == "ModuleList" and len(sub) > 1 and len(set(sub)) == 1 and "\n" not in sub[0]:
        one = f"{head}{opening}{sub[0]} for _ in range({len(sub)}){closing}"
        if indent + len(one) <= WIDTH:
            return one
        return f"{head}{opening}\n    {sub[0]}\n    for _ in range({len(sub)})\n{closing}"
    if e.kind != "Sequential" or list(e.keys) == [str(i) for i in range(len(sub))]:
        return fmt_call(head + opening, _runs(sub, indent, head + opening, closing), indent, closing)
    prefix = _KEY_PREFIX.match(e.keys[0]) if e.keys else None
    if (prefix and len(set(sub)) == 1 and len(sub) > 1
            and list(e.keys) == [f"{prefix.group(0)}{i}" for i in range(len(sub))]):
        gen = f'(f"{prefix.group(0)}{{i}}", {sub[0]}) for i in range({len(sub)})'
        return fmt_call(f"{head}nn.Sequential(OrderedDict(", [gen], indent, "))")
    if all(k.isidentifier() and k.isascii() and not keyword.iskeyword(k) for k in e.keys):
        return fmt_call(f"{head}nn.Sequential(OrderedDict(", [f"{k}={x}" for k, x in pairs], indent, "))")
    items = [f"{str_lit(k)}: {x}" for k, x in pairs]  # a dict display keeps its order, as OrderedDict(k=...)
    return fmt_call(f"{head}nn.Sequential(OrderedDict({{", items, indent, "}))")


def module_expr(node: Node, class_of: Callable[[Node, str], str], path: str, indent: int) -> str:
    """The constructor expression building ``node`` (``class_of`` writes Block and Opaque calls).

    Where ``node`` nests too deeply for one expression, the text starts with statements
    (see ``render``) and ``HEAD_SLOT`` marks where the caller's ``return ``/``x = `` goes:
    write it with ``with_head``.
    """
    return render(node_expr(node, path, lambda n, p: Raw(class_of(n, p))), {}, indent, HEAD_SLOT)


HEAD_SLOT = "\x00"
"""Marks the start of the final statement in ``module_expr``'s text (never in rendered code)."""


def with_head(text: str, head: str) -> str:
    """``module_expr``'s text with ``head`` (``return ``) where the expression starts."""
    return text.replace(HEAD_SLOT, head, 1) if HEAD_SLOT in text else head + text


def container_kind(node: Node) -> str | None:
    """How members of ``node`` are indexed: Sequential/ModuleList by int, ModuleDict by key.

    A Chain or Parallel whose names are not ``"0", "1", ...`` in order is reached by name: an
    ``nn.Sequential`` indexes by position, so ``[1]`` would be the wrong layer for names ``("1", "0")``.
    """
    if isinstance(node, (Chain, Parallel)):
        if list(node.names) == [str(i) for i in range(len(node.names))]:
            return "Sequential"
        return "ModuleDict" if isinstance(node, Parallel) else None
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
            return f"{code}.{store}[{str_lit(part)}]"
        return code

    return reach


def _is_buffer(node: Node, name: str) -> bool:
    if isinstance(node, Block):
        return any(s.name == name and not s.parameter for s in node.state)
    if isinstance(node, Primitive):
        return any(n == name and not is_param for n, _, is_param in node.state())
    return False
