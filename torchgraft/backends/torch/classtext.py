"""The text of one emitted class: signature, ``__init__`` statements and ``forward``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torchgraft.backends.torch.body import body_lines
from torchgraft.backends.torch.const_values import Formula
from torchgraft.backends.torch.ctor import Call, CExpr, Lit, Raw
from torchgraft.backends.torch.forward import Special
from torchgraft.backends.torch.lifting import Lifted, apply_lifting
from torchgraft.backends.torch.loops import Items
from torchgraft.backends.torch.modules import accessor, container_kind, render
from torchgraft.backends.torch.names import RESERVED, Namespace, is_plain_attr, safe_doc, str_lit
from torchgraft.backends.torch.params import ParamSpec
from torchgraft.backends.torch.series import series_text
from torchgraft.backends.torch.wrap import wrap
from torchgraft.ir.nodes import Block, Node, Parallel, PySource, module_children
from torchgraft.ir.traverse import join, node_at

if TYPE_CHECKING:
    from torchgraft.backends.torch.classes import ClassTable
    from torchgraft.backends.torch.groups import Group


@dataclass
class Member:
    """A parameter, buffer, attribute or child built in ``__init__``; ``flag``: the hole that guards it."""

    kind: str
    name: str
    expr: CExpr
    flag: int | None = None


def _statement(m: Member, persistent: bool) -> CExpr:
    """The ``__init__`` statement setting member ``m``, as an expression tree."""
    if m.kind == "buffer":
        extra = () if persistent else (("persistent", Lit(False)),)
        return Call("self.register_buffer", (Raw(str_lit(m.name)), m.expr), extra)
    how = {"param": "self.register_parameter", "child": "self.add_module"}.get(m.kind, "setattr")
    first = (Raw("self"),) if how == "setattr" else ()
    return Call(how, first + (Raw(str_lit(m.name)), m.expr))


def member_lines(m: Member, names: Mapping[int, str], persistent: bool = True) -> list[str]:
    """Statements (at the indentation of ``__init__``'s body) building one member."""
    if m.kind == "series":
        return [series_text(m.name, m.expr, names, render)]
    plain = is_plain_attr(m.name) and m.kind != "buffer"
    indent = 8 if m.flag is None else 12
    text = (render(m.expr, names, indent, f"self.{m.name} = ") if plain
            else render(_statement(m, persistent), names, indent))
    if m.flag is None:
        return [text]
    none = f"self.{m.name} = None" if is_plain_attr(m.name) else f"self.add_module({str_lit(m.name)}, None)"
    return [none, f"if {names[m.flag]}:", "    " + text.replace("\n", "\n    ")]


def _formula_lines(m: Member, persistent: bool, made: dict[Formula, str], taken: set[str]) -> list[str] | None:
    """A buffer a formula builds (``const_values.Formula``) through a local, as the original code reads:
    ``inv_freq = 1.0 / 10000 ** (...)`` then ``self.register_buffer("inv_freq", inv_freq, ...)``; a later buffer
    with the same formula gets ``inv_freq.clone()`` (its own storage, the same value). None: written in place."""
    if m.kind != "buffer" or m.flag is not None or not isinstance(m.expr, Formula):
        return None
    if m.expr in made:
        return member_lines(Member(m.kind, m.name, Raw(f"{made[m.expr]}.clone()")), {}, persistent)
    if not is_plain_attr(m.name) or m.name in taken or m.name in RESERVED:  # would shadow a name in scope
        return None
    made[m.expr] = m.name
    return [f"{m.name} = {m.expr.text}", *member_lines(Member(m.kind, m.name, Raw(m.name)), {}, persistent)]


def signature_text(specs: list[ParamSpec]) -> str:
    """``def __init__(self, ...) -> None:`` for these arguments, wrapped."""
    parts = ["self"]
    for s in specs:
        text = s.name + (f": {s.annotation}" if s.annotation else "")
        if s.default is not None:
            default = render(s.default, {}, 0)
            text += f" = {default}" if s.annotation else f"={default}"
        parts.append(text)
    return "\n".join(wrap(f"    def __init__({', '.join(parts)}) -> None:"))


def _attr_names(used: list[int], names: Mapping[int, str], members: list[Member]) -> dict[int, str]:
    """Attribute names for the arguments the forward reads (``self.stride``)."""
    ns = Namespace({m.name for m in members})
    out: dict[int, str] = {}
    by_param: dict[str, str] = {}
    for h in used:
        p = names[h]
        if p not in by_param:
            by_param[p] = ns.name(p if is_plain_attr(p) else p + "_value")
        out[h] = by_param[p]
    return out


def _class_key(table: ClassTable, path: str, node: Node) -> object:
    """What an item is emitted as: its class's constructor name (Blocks), else its IR node type."""
    call = table.calls.get(path) if isinstance(node, Block) else None
    if isinstance(call, Call):
        return call.head
    return type(node).__name__, getattr(node, "cls", None)


def _items(group: Group, table: ClassTable) -> Items:
    """The containers of ``group``'s instances, for loop re-rolling: equal in every instance, or None."""
    def items(container: str) -> tuple[str, tuple[str, ...], tuple[object, ...]] | None:
        if group.family.rolled and not container:  # every instance loops over all its own children (rolled.py)
            base = next(b for k, (_, b) in enumerate(group.insts) if group.variant_of[k] == group.family.base)
            return "self", tuple(n for n, _ in base.children), ("child",) * len(base.children)
        found = None
        for path, block in group.insts:
            node = node_at(block, container) if container else block
            kind = "self" if not container else container_kind(node) if node is not None else None
            if node is None or kind is None or isinstance(node, Parallel):
                return None
            kids = module_children(node)
            cur = (kind, tuple(k for k, _ in kids),
                   tuple(_class_key(table, join(join(path, container), k), c) for k, c in kids))
            if found is not None and cur != found:
                return None
            found = cur
        return found
    return items


def class_text(group: Group, specs: list[ParamSpec], names: Mapping[int, str], members: list[Member],
               lifted: Lifted, flag_hole: int | None, extra: list[str], table: ClassTable,
               persistent: Mapping[str, bool]) -> str:
    """The whole class definition."""
    fam = group.family
    used = sorted(set(lifted.positions.values())) + ([flag_hole] if flag_hole is not None else [])
    attrs = _attr_names(used, names, members)
    init = list(dict.fromkeys(["super().__init__()"] + [f"self.{attrs[h]} = {names[h]}" for h in used]))
    made: dict[Formula, str] = {}
    taken = set(table.names.used()) | table.reserved | set(names.values()) | {"i", "_", "super"}
    for m in members:
        keep = persistent.get(m.name, True)
        init += _formula_lines(m, keep, made, taken) or member_lines(m, names, keep)
    init += extra
    body, syn = apply_lifting(fam.body, "body", lifted, attrs)
    train = None
    if fam.train is not None:
        train, train_syn = apply_lifting(fam.train, "train", lifted, attrs)
        syn = {**syn, **train_syn}
    alt = None
    if fam.alt is not None and flag_hole is not None:  # the flagged variant's forward (variants._alternative)
        alt_graph, alt_syn = apply_lifting(fam.alt, "alt", lifted, attrs)
        syn = {**syn, **alt_syn}
        alt = (f"self.{attrs[flag_hole]}", alt_graph)
    special = Special(syn, dict(fam.optional_ops), items=_items(group, table), rolled=fam.rolled)
    if fam.flag_at is not None and flag_hole is not None:
        special.flag = (fam.flag_at, f"self.{attrs[flag_hole]}", fam.flag_result)
    rep = max((b for k, (_, b) in enumerate(group.insts) if group.variant_of[k] == fam.base),
              key=lambda b: len(b.children))
    if isinstance(rep.body, PySource):  # the original forward (and methods it calls), copied
        forward = rep.body.source.rstrip("\n").split("\n")
    else:
        forward = body_lines(body, train, accessor(rep), table.imports, frozenset(table.reserved), special, alt)
    lines = [f"class {group.name}(nn.Module):", f'    """From {safe_doc(str(group.cls))}."""', ""]
    if specs or init != ["super().__init__()"]:  # nothing to set up: nn.Module's own __init__ serves
        lines += [signature_text(specs)] + [f"        {ln}" for stmt in init for ln in stmt.split("\n")] + [""]
    lines += [f"    {ln}" if ln else "" for ln in forward]
    if rep.extra_state is not None:  # get_extra_state/set_extra_state, as the original class wrote them
        lines += [""] + [f"    {ln}" if ln else "" for ln in rep.extra_state.source.rstrip("\n").split("\n")]
    return "\n".join(lines) + "\n"
