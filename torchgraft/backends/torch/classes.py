"""One Python class per original class: ``__init__`` takes what differs between instances.

``groups.py`` decides which instances share a class; here their constructor expressions
are anti-unified (``unify.py``), the differing literals become arguments (``params.py``),
constants that differ in the forward become attributes (``self.p``), and the class is
written (``classtext.py``). Each instance's call (``Bottleneck(64, 64, 256, downsample=True)``)
is kept for its parent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torchgraft.backends.torch.attr_exprs import attr_expr
from torchgraft.backends.torch.classtext import Member, class_text
from torchgraft.backends.torch.ctor import Call, CExpr, Lit, lit_of, node_expr
from torchgraft.backends.torch.groups import Group, plan
from torchgraft.backends.torch.lifting import lift_consts
from torchgraft.backends.torch.modules import render
from torchgraft.backends.torch.names import Namespace, str_lit
from torchgraft.backends.torch.params import build_params, instance_call
from torchgraft.backends.torch.seqclass import arguments, sequential_items, sequential_text, unified
from torchgraft.backends.torch.series import series_members
from torchgraft.backends.torch.unify import Unifier
from torchgraft.errors import EmitError
from torchgraft.ir.functions import helper_name
from torchgraft.ir.graph import FunctionCall
from torchgraft.ir.model import Helper
from torchgraft.ir.nodes import Block, Node, Opaque, PySource, StateSpec
from torchgraft.ir.traverse import join

_LOCAL = {"self", "i", "_", "super"}


@dataclass
class ClassTable:
    """Collects class definitions for every Block under a root, and each instance's constructor call."""

    names: Namespace = field(default_factory=Namespace)
    defs: list[str] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)
    extra_init: dict[int, list[str]] = field(default_factory=dict)
    reserved: set[str] = field(default_factory=set)
    opaque_imports: dict[tuple[str, str], str] = field(default_factory=dict)
    helpers: tuple[Helper, ...] = ()
    calls: dict[str, CExpr] = field(default_factory=dict)
    called_helpers: set[str] = field(default_factory=set)
    written: dict[str, CExpr] = field(default_factory=dict)
    """Buffers built by a constructor that writes their value exactly, by key (``const_values``)."""
    prepared: bool = False

    def prepare(self, root: Node) -> None:
        """Plan and write the classes for every Block under ``root`` (once)."""
        if self.prepared:
            return
        self.prepared = True
        groups = plan(root, self.names)
        shared = Counter(g.cls for g in groups if g.sequential)
        for group in groups:
            if group.sequential:  # split (a subclass nested in itself): each instance stays nn.Sequential
                self._emit_sequential(group, plain=shared[group.cls] > 1)
                continue
            self._emit(group)
            for g in (group.family.body, group.family.train):
                self.called_helpers |= {name for op in (g.ops if g else ()) if isinstance(op.target, FunctionCall)
                                        for name in [helper_name(op.target.qualname)] if name is not None}

    def fx_wrap(self, helper: str) -> str:
        """``torch.fx.wrap("f")`` after a copied helper the forwards call, as the original module did
        (fx then keeps the call, so capturing ``model.py`` again gives the same graph)."""
        return f"\n\ntorch.fx.wrap({str_lit(helper)})\n" if helper in self.called_helpers else ""

    def class_of(self, node: Node, path: str) -> str:
        """The constructor call for the Block or Opaque module at ``path`` (the root: prepares first)."""
        if not self.prepared:
            self.prepare(node)
        return render(self.call_of(node, path), {}, 4)

    def call_of(self, node: Node, path: str) -> CExpr:
        """The constructor call as an expression tree."""
        if isinstance(node, Opaque):
            return self._opaque_call(node)
        if path not in self.calls:
            raise EmitError(f"internal: no class was planned for the Block at {path or '<root>'}")
        return self.calls[path]

    def _opaque_call(self, node: Opaque) -> Call:
        mod, qual = node.cls.module, node.cls.qualname
        parts = mod.split(".") + qual.split(".")
        if not all(p.isidentifier() and p.isascii() and not _keyword(p) for p in parts):
            raise EmitError(f"cannot import opaque class {node.cls}: not a valid module path")
        key = (mod, qual)
        if key not in self.opaque_imports:
            self.opaque_imports[key] = self.names.name(qual.split(".")[0])
        alias = self.opaque_imports[key]
        rest = qual.split(".", 1)[1] if "." in qual else ""
        kwargs = tuple((k, lit_of(v)) for k, v in node.ctor or ())
        if not all(k.isidentifier() and not _keyword(k) for k, _ in kwargs):
            raise EmitError(f"cannot rebuild opaque {node.cls}: constructor argument names are not identifiers")
        return Call(f"{alias}{'.' + rest if rest else ''}", (), kwargs)

    def _emit(self, group: Group) -> None:
        u = Unifier(len(group.insts))
        members = self._members(group, u)
        lifted = lift_consts(group, u, self.helpers)
        fam = group.family
        flag_hole = None
        if fam.flag_at is not None or fam.alt is not None:
            flags: list[CExpr | None] = [Lit(v in fam.flagged) for v in group.variant_of]
            flag_hole = u.hole(flags, ("forward", fam.flag_name), flag=fam.flag_name).index
        specs, index = build_params(u.holes, self.names.used() | self.reserved | _LOCAL)
        names = {h: specs[index[h]].name for h in range(len(u.holes))}
        first = group.insts[0][1]
        persistent = {s.name: s.persistent for s in first.state}
        text = class_text(group, specs, names, members, lifted, flag_hole, self.extra_init.get(id(first), []),
                          self, persistent)
        self.defs.append(text)
        for k, (path, _) in enumerate(group.insts):
            self.calls[path] = instance_call(group.name, specs, k)

    def _emit_sequential(self, group: Group, plain: bool) -> None:
        """An ``nn.Sequential`` subclass as one class (``seqclass.py``), else each instance as the
        ``nn.Sequential`` it is."""
        items = [sequential_items(b, path, self.call_of) for path, b in group.insts]
        found = None if plain else unified(items)
        if found is None:
            self.calls.update((path, e) for (path, _), e in zip(group.insts, items, strict=True))
            return
        merged, u = found
        specs, names = arguments(u, self.names.used() | self.reserved | _LOCAL)
        extra = self.extra_init.get(id(group.insts[0][1]), [])
        self.defs.append(sequential_text(group.name, group.cls, merged, specs, names, extra))
        for k, (path, _) in enumerate(group.insts):
            self.calls[path] = instance_call(group.name, specs, k)

    def _members(self, group: Group, u: Unifier) -> list[Member]:
        per_inst = [self._member_exprs(path, b) for path, b in group.insts]
        if group.family.rolled:  # instances with more or fewer numbered children build them in a loop
            per_inst = [series_members(ms) for ms in per_inst]
        order: dict[str, str] = {}
        for ms in sorted(per_inst, key=len, reverse=True):
            for kind, name, _ in ms:
                order.setdefault(name, kind)
        out = []
        for name, kind in order.items():
            exprs: list[CExpr | None] = [next((e for _, n, e in ms if n == name), None) for ms in per_inst]
            flag = None
            if any(e is None for e in exprs):
                flag = u.hole([Lit(e is not None) for e in exprs], (name, name), flag=name).index
            out.append(Member(kind, name, u.unify(exprs, (name, name)), flag))
        return out

    def _member_exprs(self, path: str, b: Block) -> list[tuple[str, str, CExpr]]:
        out: list[tuple[str, str, CExpr]] = [("param" if s.parameter else "buffer", s.name,
                                              self.written.get(join(path, s.name)) or _state_expr(s))
                                             for s in b.state]
        out += [("attr", n, Lit(c.value)) for n, c in b.constants]
        if isinstance(b.body, PySource):
            out += [("attr", n, attr_expr(v)) for n, v in b.body.attrs]
        if b.extra_state is not None:
            out += [("attr", n, attr_expr(v)) for n, v in b.extra_state.attrs]
        out += [("child", n, node_expr(c, join(path, n), self.call_of)) for n, c in b.children]
        return out


def _keyword(name: str) -> bool:
    import keyword

    return keyword.iskeyword(name)


def _state_expr(s: StateSpec) -> CExpr:
    dims = tuple(Lit(d) for d in s.shape) or (Lit(()),)
    dtype = () if s.dtype == "float32" else (("dtype", Lit(_dtype(s.dtype))),)
    tensor = Call("torch.zeros", dims, dtype, ("size",) * len(dims))  # type: ignore[arg-type]
    # requires_grad is set per instance by build() (emitter.frozen_keys): one class serves frozen and trainable
    return tensor if not s.parameter else Call("nn.Parameter", (tensor,))


def _dtype(name: str) -> object:
    import torch

    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise EmitError(f"unknown dtype {name!r} for a parameter or buffer")
    return value
