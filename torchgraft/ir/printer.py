"""The IR's deterministic text form: the module tree with kinds and types, and each Block's forward.

::

    model Net(x: f32[N, 3, 32, 32]) -> f32[N, 10]
      | stem = stem(x)
      | ...
      stem     Chain                          f32[N, 16, 32, 32]
        0      Conv2d(3, 16, kernel_size=3, padding=1, bias=False)   f32[N, 16, 32, 32]

One row per module-level node (name, kind, output type when known), children indented
by two spaces per level. A Block's forward follows its row as ``| `` lines, one per op;
graphs longer than 12 ops show their first 10. A Chain item equal to an earlier item is
shown once, later ones as ``(same as 0)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from torchgraft.ir.graph import (
    ChildCall,
    FunctionCall,
    GetAttr,
    Graph,
    Guard,
    Input,
    InputKind,
    MethodCall,
    Op,
    PrimCall,
)
from torchgraft.ir.model import Helper, Model
from torchgraft.ir.nodes import (
    Block,
    Chain,
    ChildRef,
    Container,
    Node,
    Opaque,
    Parallel,
    PySource,
    SkipConnection,
    module_children,
)
from torchgraft.ir.opkinds import OpKind, is_kind, symbol_of
from torchgraft.ir.primitives import Activation, Primitive
from torchgraft.ir.structure import leaves, recognize
from torchgraft.ir.traverse import node_at
from torchgraft.ir.types import UNKNOWN, ValueType
from torchgraft.ir.values import Arg, ByMode, Const, DictArg, Ref, Seq, Slice, Training

MAX_OPS = 12
SHOWN_OPS = 10
TYPE_COLUMN_MAX = 72
_PREFIXES = (("torch.nn.functional.", "F."), ("builtins.", ""))

Row = tuple[str, str]
"""(text, type text): the type column is aligned when rows are joined."""


def format_arg(arg: Arg) -> str:
    """An argument as Python-like source: ``x``, ``1``, ``(a, b)``, ``::2``, ``self.training``."""
    if isinstance(arg, Ref):
        return arg.name
    if isinstance(arg, Const):
        return "..." if arg.value is Ellipsis else repr(arg.value)
    if isinstance(arg, Seq):
        inner = ", ".join(format_arg(a) for a in arg.items)
        return f"[{inner}]" if arg.is_list else f"({inner}{',' if len(arg.items) == 1 else ''})"
    if isinstance(arg, Slice):
        parts = ["" if isinstance(p, Const) and p.value is None else format_arg(p)
                 for p in (arg.start, arg.stop, arg.step)]
        return ":".join(parts[:2]) + (f":{parts[2]}" if parts[2] else "")
    if isinstance(arg, ByMode):
        return f"({format_arg(arg.train)} if training else {format_arg(arg.eval)})"
    if isinstance(arg, Training):
        return "self.training"
    if isinstance(arg, DictArg):
        return "{" + ", ".join(f"{k!r}: {format_arg(v)}" for k, v in arg.items) + "}"
    return repr(arg)


def _call_text(fn: str, args: list[str]) -> str:
    return f"{fn}({', '.join(args)})"


def _prim_call(prim: Primitive, args: list[str]) -> str:
    if not isinstance(prim, Activation):
        return _call_text(prim.label(), args)
    opts = [f"{k}={v!r}" for k, v in prim.options]
    kind, how, under = prim.kind, prim.spelling.value, "_" if prim.inplace else ""
    if how == "method" and kind.method and args:
        return _call_text(f"{args[0]}.{kind.method}{under}", args[1:] + opts)
    if how == "torch" and kind.torch_fn:
        return _call_text(f"torch.{kind.torch_fn}{under}", args + opts)
    opts += ["inplace=True"] if prim.inplace else []
    return _call_text(f"F.{kind.functional}", args + opts)


def format_op(op: Op) -> str:
    """One statement: ``bn1 = bn1(conv1)``, ``flatten = torch.flatten(avgpool, 1)``, ``add = bn2 + x``."""
    args = [format_arg(a) for a in op.args]
    kw = [f"{k}={format_arg(v)}" for k, v in op.kwargs]
    t = op.target
    if isinstance(t, ChildCall):
        rhs = _call_text(t.path, args + kw)
    elif isinstance(t, GetAttr):
        rhs = f"self.{t.path}"
    elif isinstance(t, MethodCall):
        rhs = _call_text(f"{args[0]}.{t.name}", args[1:] + kw)
    elif isinstance(t, PrimCall):
        rhs = _prim_call(t.prim, args + kw)
    elif isinstance(t, FunctionCall):
        rhs = _function_call(op, args, kw)
    elif isinstance(t, Guard):
        return f"guard {args[0]}: {t.message}"
    else:
        rhs = _call_text(repr(t), args + kw)
    return f"{op.name} = {rhs}"


def _function_call(op: Op, args: list[str], kw: list[str]) -> str:
    assert isinstance(op.target, FunctionCall)
    symbol = symbol_of(op)
    if symbol and len(args) == 2 and not kw:
        return f"{args[0]} {symbol} {args[1]}"
    if is_kind(op, OpKind.GETITEM) and len(args) == 2 and not kw:
        index = args[1][1:-1] if args[1].startswith("(") and args[1].endswith(")") else args[1]
        return f"{args[0]}[{index.rstrip(',')}]"
    qualname = op.target.qualname
    for prefix, short in _PREFIXES:
        if qualname.startswith(prefix):
            qualname = short + qualname[len(prefix):]
    return _call_text(qualname, args + kw)


def format_input(inp: Input) -> str:
    """A forward parameter: ``x: f32[N, 3]``, ``mask=None``, ``*args``."""
    star = {InputKind.VAR_POSITIONAL: "*", InputKind.VAR_KEYWORD: "**"}.get(inp.kind, "")
    text = star + inp.name + ("" if inp.type == UNKNOWN else f": {inp.type}")
    if inp.default is not None:
        text += f" = {format_arg(inp.default)}" if inp.type != UNKNOWN else f"={format_arg(inp.default)}"
    return text


def format_graph(graph: Graph, title: str = "forward") -> list[str]:
    """A graph as lines: ``forward(x):``, then one indented line per op (long graphs cut), ``return out``."""
    lines = [f"{title}({', '.join(format_input(i) for i in graph.inputs)}):"]
    ops = graph.ops if len(graph.ops) <= MAX_OPS else graph.ops[:SHOWN_OPS]
    lines += ["  " + format_op(op) for op in ops]
    if len(ops) < len(graph.ops):
        lines.append(f"  ... ({len(graph.ops) - len(ops)} more ops)")
    lines.append(f"  return {format_arg(graph.output)}")
    return lines


def format_body(node: Node) -> str:
    """A combinator body over child references, as one formula: ``relu(SkipConnection(add, Chain(a, b)))``."""
    if isinstance(node, ChildRef):
        return node.path
    if isinstance(node, Chain):
        return f"Chain({', '.join(format_body(i) for i in node.items)})"
    if isinstance(node, Parallel):
        return f"Parallel({node.combine}, {', '.join(format_body(b) for b in node.branches)})"
    if isinstance(node, SkipConnection):
        return f"SkipConnection({node.combine}, {format_body(node.body)})"
    return kind_label(node)


def structural_form(body: Node, owner: Block | None = None, helpers: Mapping[str, Helper] | None = None
                    ) -> Node | None:
    """The combinator form of a Block body when it has one (a Graph that is only structure over children
    and layers: ``Chain(SkipConnection(add, Chain(conv1, bn1, relu, conv2, bn2)), relu)``), else None.
    ``owner``: the Block whose body it is (its children tell whether ``out += x`` may be read as a join);
    ``helpers``: the model's copied functions (``Model.helper_functions()``), read the same way."""
    if not isinstance(body, Graph):
        return body
    form = recognize(body, None if owner is None else functools.partial(node_at, owner), helpers)
    if isinstance(form, Graph) or any(isinstance(n, Graph) for n in leaves(form)):
        return None
    return form


def kind_label(node: Node) -> str:
    """The kind column: ``Conv2d(3, 16, kernel_size=3)``, ``Chain x3 of Block<BasicBlock>``, ``ModuleList[4]``."""
    if isinstance(node, Primitive):
        return node.label()
    if isinstance(node, Chain):
        classes = {i.cls for i in node.items if isinstance(i, Block)}
        if node.items and len(classes) == 1 and all(isinstance(i, Block) for i in node.items):
            return f"Chain x{len(node.items)} of Block<{classes.pop().name}>"
        return "Chain" if node.cls is None else f"Chain<{node.cls.name}>"  # an nn.Sequential subclass
    if isinstance(node, Block):
        return f"Block<{node.cls.name}>" + (" [train/eval differ]" if node.train_body is not None else "")
    if isinstance(node, Container):
        if node.kind == "ModuleList":
            return f"ModuleList[{len(node.items)}]"
        keys = [k for k, _ in node.items]
        return f"ModuleDict[{', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}]"
    if isinstance(node, Opaque):
        reason = node.reason.strip().splitlines()[0] if node.reason.strip() else "no reason given"
        return f"Opaque<{node.cls.name}> ({reason[:77] + '...' if len(reason) > 80 else reason})"
    if isinstance(node, Parallel):
        return f"Parallel({node.combine})"
    if isinstance(node, SkipConnection):
        return f"SkipConnection({node.combine})"
    if isinstance(node, ChildRef):
        return f"-> {node.path}"
    if isinstance(node, Graph):
        return f"Graph({len(node.ops)} ops)"
    if isinstance(node, PySource):
        return f"python source ({len(node.source.splitlines())} lines, copied)"
    return type(node).__name__


def _forward_rows(block: Block, indent: str, helpers: Mapping[str, Helper]) -> list[Row]:
    bodies = [(block.body, "forward")]
    if block.train_body is not None:
        bodies.append((block.train_body, "forward [training]"))
    lines: list[str] = []
    for body, title in bodies:
        form = structural_form(body, block, helpers)
        lines += format_graph(body, title) if isinstance(body, Graph) and form is None else [
            f"{title}: {format_body(form if form is not None else body)}"]
    return [(f"{indent}| {line}", "") for line in lines]


def _tree_rows(node: Node, path: str, level: int, ctx: _Ctx) -> list[Row]:
    """Rows for ``node``'s forward (when a Block) and its children, at ``level`` (root = 0)."""
    indent = "  " * (level + 1)
    rows = _forward_rows(node, indent, ctx.helpers) if isinstance(node, Block) and ctx.forward else []
    kids = module_children(node)
    if ctx.depth is not None and level >= ctx.depth:
        return rows
    width = max((len(n) for n, _ in kids), default=0) + 2
    seen: list[tuple[str, Node]] = []
    for name, child in kids:
        child_path = f"{path}.{name}" if path else name
        same = next((n for n, c in seen if c == child), None) if isinstance(node, Chain) else None
        label = f"{kind_label(child)} (same as {same})" if same is not None else kind_label(child)
        rows.append((f"{indent}{name.ljust(width)}{label}", ctx.type_text(child_path)))
        if same is None:
            if isinstance(child, (Block, Chain)):
                seen.append((name, child))
            rows += _tree_rows(child, child_path, level + 1, ctx)
    return rows


class _Ctx:
    def __init__(self, model: Model | None, depth: int | None, forward: bool) -> None:
        self.types: dict[str, ValueType] = dict(model.types) if model is not None else {}
        self.helpers: dict[str, Helper] = model.helper_functions() if model is not None else {}
        self.depth = depth
        self.forward = forward

    def type_text(self, path: str) -> str:
        t = self.types.get(path, UNKNOWN)
        return "" if t == UNKNOWN else str(t)


def _join(rows: list[Row]) -> str:
    typed = [len(text) for text, t in rows if t]
    column = min(max(typed, default=0), TYPE_COLUMN_MAX) + 2
    return "\n".join(f"{text.ljust(column - 2)}  {t}" if t else text for text, t in rows)


def format_model(model: Model, depth: int | None = None, forward: bool = True) -> str:
    """The model as text: a ``model Name(inputs) -> type`` line, then the module tree.

    ``depth`` limits how many module levels are shown (0: the header and the root's
    forward only); ``forward=False`` leaves out the Blocks' forward lines.
    """
    ctx = _Ctx(model, depth, forward)
    out = "" if model.output_type == UNKNOWN else f" -> {model.output_type}"
    header = f"model {model.name}({', '.join(format_input(i) for i in model.inputs)}){out}"
    rows: list[Row] = [(header, "")] + _tree_rows(model.root, "", 0, ctx)
    if not module_children(model.root):
        rows.insert(1, (f"  {kind_label(model.root)}", ctx.type_text("")))
    rows += [(f"  tie {alias} -> {target}", "") for alias, target in model.ties]
    rows += [(f"  helper {h.key} (from {h.origin})", "") for h in model.helpers]
    return _join(rows)


def format_node(node: Node, depth: int | None = None, forward: bool = True) -> str:
    """One node as text: its kind on the first line, then its forward and children (no types)."""
    ctx = _Ctx(None, depth, forward)
    return _join([(kind_label(node), "")] + _tree_rows(node, "", 0, ctx))
