"""One Python class per distinct Block: ``__init__`` builds children, ``forward`` replays the body."""

from __future__ import annotations

from dataclasses import dataclass, field

from torchgraft.backends.torch.body import body_lines
from torchgraft.backends.torch.modules import accessor, fmt_call, module_expr
from torchgraft.backends.torch.names import Namespace, is_plain_attr
from torchgraft.backends.torch.exprs import ExprContext, arg_code
from torchgraft.errors import EmitError
from torchgraft.ir.nodes import Block, Node, Opaque, StateSpec


@dataclass
class ClassTable:
    """Collects class definitions; identical definitions of one original class share a name."""

    names: Namespace = field(default_factory=Namespace)
    by_text: dict[tuple[str, str], str] = field(default_factory=dict)
    defs: list[str] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)
    extra_init: dict[int, list[str]] = field(default_factory=dict)
    reserved: set[str] = field(default_factory=set)

    opaque_imports: dict[tuple[str, str], str] = field(default_factory=dict)
    variants: dict[str, int] = field(default_factory=dict)

    def class_of(self, block: Node, path: str) -> str:
        """The constructor call for a Block (its class emitted first if new) or an Opaque module."""
        if isinstance(block, Opaque):
            return self._opaque_call(block)
        assert isinstance(block, Block)
        text = class_text(block, self, self.extra_init.get(id(block), []))
        key = (block.cls.qualname, text)
        if key not in self.by_text:
            name = self._class_name(block.cls.name)
            self.by_text[key] = name
            self.defs.append(text.replace("__CLASS__", name))
        return f"{self.by_text[key]}()"

    def _class_name(self, base: str) -> str:
        """``Bottleneck``, then ``Bottleneck2``, ``Bottleneck3``... for differing instances."""
        self.variants[base] = n = self.variants.get(base, 0) + 1
        return self.names.name(base if n == 1 else f"{base}{n}")

    def _opaque_call(self, node: Opaque) -> str:
        mod, qual = node.cls.module, node.cls.qualname
        if not all(p.isidentifier() for p in mod.split(".") + qual.split(".")):
            raise EmitError(f"cannot import opaque class {node.cls}: not a valid module path")
        key = (mod, qual)
        if key not in self.opaque_imports:
            self.opaque_imports[key] = self.names.name(qual.split(".")[0])
        alias = self.opaque_imports[key]
        rest = qual.split(".", 1)[1] if "." in qual else ""
        args = ", ".join(f"{k}={arg_code(v, ExprContext({}, str)).text}" for k, v in node.ctor or ())
        return f"{alias}{'.' + rest if rest else ''}({args})"


def _state_init(s: StateSpec) -> str:
    shape = ", ".join(str(d) for d in s.shape)
    dtype = "" if s.dtype == "float32" else f", dtype=torch.{s.dtype}"
    tensor = f"torch.zeros(({shape}{',' if len(s.shape) == 1 else ''}){dtype})"
    if s.parameter:
        grad = "" if s.requires_grad else ", requires_grad=False"
        value = f"nn.Parameter({tensor}{grad})"
        return f"self.{s.name} = {value}" if is_plain_attr(s.name) else \
            f"self.register_parameter({s.name!r}, {value})"
    persistent = "" if s.persistent else ", persistent=False"
    return f"self.register_buffer({s.name!r}, {tensor}{persistent})"


def class_text(block: Block, table: ClassTable, extra_init: list[str]) -> str:
    """The class definition (named ``__CLASS__``) for one Block."""
    init = ["super().__init__()"] + [_state_init(s) for s in block.state]
    for name, child in block.children:
        expr = module_expr(child, table.class_of, name, 8)
        if is_plain_attr(name):
            init.append(f"self.{name} = {expr}")
        else:
            init.append(fmt_call("self.add_module(", [repr(name), expr], 8))
    init += extra_init
    reach = accessor(block)
    forward = body_lines(block, reach, table.imports, frozenset(table.reserved))
    doc = f'    """From {block.cls}."""\n\n'
    lines = [f"class __CLASS__(nn.Module):\n", doc, "    def __init__(self) -> None:\n"]
    lines += [f"        {ln}\n" for stmt in init for ln in stmt.split("\n")]
    lines.append("\n")
    lines += [f"    {ln}\n" if ln else "\n" for ln in forward]
    return "".join(lines)
