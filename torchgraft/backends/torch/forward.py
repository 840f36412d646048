"""A Block's forward body (Graph) as readable Python statements.

A value used once, by the very next op, is written inline (``self.bn1(self.conv1(x))``),
up to three nested calls per line, which keeps the original evaluation order exactly;
everything else gets a name (``valnames.py``). Pure ops whose result is never used
(``x.shape`` fx recorded for an assert message) are left out. Long lines are wrapped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torchgraft.backends.torch.exprs import Code, ExprContext, arg_code, guard_lines, negatable, op_code
from torchgraft.backends.torch.grouped import GroupedStatements
from torchgraft.backends.torch.loops import Items, Loop, find_loops
from torchgraft.backends.torch.valnames import (
    GENERIC,
    ValueNamer,
    child_word,
    chosen,
    hint,
    shape_source,
    source_name,
    specific,
    without_source_names,
)
from torchgraft.backends.torch.wrap import WIDTH, wrap
from torchgraft.errors import EmitError
from torchgraft.ir.dims import relayout
from torchgraft.ir.effects import augmented_symbol, pruned, writes_shape
from torchgraft.ir.graph import (
    ChildCall,
    FunctionCall,
    Graph,
    Guard,
    Input,
    InputKind,
    MethodCall,
    Op,
    PrimCall,
)
from torchgraft.ir.idioms import simplified
from torchgraft.ir.opkinds import TRAITS, OpKind, is_kind, is_operator, kind_of
from torchgraft.ir.types import UNKNOWN, ScalarType, TensorType, ValueType
from torchgraft.ir.values import Const, Ref, refs_in

MAX_INLINE = 72
MAX_DEPTH = 3
MODULE_GLOBALS = frozenset({"self", "torch", "nn", "F", "Tensor", "math", "operator", "collections",
                            "OrderedDict", "Path", "typing"})


def annotation(t: ValueType) -> str:
    """A type annotation for a value type (``Tensor``, ``int``, ...), "" when unknown."""
    if isinstance(t, TensorType):
        return "Tensor"
    if isinstance(t, ScalarType) and t.name in ("int", "float", "bool", "str"):
        return t.name
    return ""


def signature(inputs: tuple[Input, ...], names: dict[str, str], ctx: ExprContext) -> str:
    """``self, x: Tensor, mask: Tensor | None = None`` for the forward's inputs."""
    parts = ["self"]
    star = defaulted = False
    for inp in inputs:
        ann = annotation(inp.type)
        text = names[inp.name] + (f": {ann}" if ann else "")
        if inp.kind is InputKind.VAR_POSITIONAL:
            text, star = "*" + text, True
        elif inp.kind is InputKind.VAR_KEYWORD:
            text = "**" + text
        elif inp.kind is InputKind.KEYWORD and not star:
            parts.append("*")
            star = True
        default = inp.default
        if default is None and defaulted and inp.kind is InputKind.POSITIONAL and not star:
            default = Const(None)  # a required parameter cannot follow a defaulted one
        if default is not None and inp.kind in (InputKind.POSITIONAL, InputKind.KEYWORD):
            if ann and default == Const(None):
                text += " | None"  # mask: Tensor | None = None
            text += f" = {arg_code(default, ctx).text}" if ann else f"={arg_code(default, ctx).text}"
            defaulted = defaulted or inp.kind is InputKind.POSITIONAL
        parts.append(text)
    return ", ".join(parts)


def is_movable(op: Op, g_ops: dict[str, Op], tuples: frozenset[str] = frozenset()) -> bool:
    """True for reads of metadata (``self.p``, ``x.shape``, ``x.size(1)``, ``shape[0]``) and of an item of
    an input tuple (``position_embeddings[0]``; ``tuples``: such inputs, see ``tuple_inputs``): they may be
    written where they are used, after other ops, without changing what they compute."""
    found = kind_of(op)
    if found is not None and TRAITS[found.kind].metadata:  # self.p, x.size(1), len(x), getattr(x, "shape")
        return True
    if found is not None and found.kind is OpKind.GETITEM and op.args:
        src = op.args[0]
        if isinstance(src, Ref) and src.name in tuples and len(op.args) == 2 and isinstance(op.args[1], Const):
            return type(op.args[1].value) is int
        return isinstance(src, Ref) and src.name in g_ops and is_movable(g_ops[src.name], g_ops)
    return False


def tuple_inputs(g: Graph) -> frozenset[str]:
    """Inputs typed as tuples that the forward only indexes (``cos, sin = position_embeddings``): a tuple
    cannot change, so reading an item later reads the same object."""
    users = g.users()
    ops = {op.name: op for op in g.ops}
    return frozenset(i.name for i in g.inputs if isinstance(i.type, ScalarType) and i.type.name == "tuple"
                     and all(u in ops and is_kind(ops[u], OpKind.GETITEM) and ops[u].args[0] == Ref(i.name)
                             for u in users.get(i.name, [])))


prune = pruned
"""``g`` without pure ops nobody reads (``ir.effects.pruned``)."""


@dataclass
class Special:
    """What a merged forward adds to a plain graph (see ``variants.py``).

    ``attrs``: graph inputs that stand for attributes (``self.p``), not parameters;
    ``optional``: op name -> child, written ``self.c(v) if self.c is not None else v``;
    ``flag``: (index of the first conditional op, condition code, value the tail replaces);
    ``items``: what ``loops.find_loops`` needs to re-roll runs of item calls.
    """

    attrs: dict[str, str] = field(default_factory=dict)
    optional: dict[str, str] = field(default_factory=dict)
    flag: tuple[int, str, str] | None = None
    items: Items | None = None
    """The containers whose item calls may be re-rolled into loops (``loops.py``); None: no loops."""
    rolled: bool = False
    """The class serves instances with more or fewer children: its growing loop must be re-rolled."""


class _Writer(GroupedStatements):
    """Writes one graph's statements, deciding what to inline and what to name."""

    def __init__(self, g: Graph, ctx: ExprContext, reserved: frozenset[str], special: Special, width: int) -> None:
        self.g, self.ctx, self.special, self.width = g, ctx, special, width
        self.users = g.users()
        self.index = {op.name: i for i, op in enumerate(g.ops)}
        self.ops = {op.name: op for op in g.ops}
        self.tuples = tuple_inputs(g)
        self.stable = not writes_shape(g)  # with x.t_() in the forward, x.size(0) is read where it was
        self.pending: dict[str, set[str]] = {}  # inlined value -> values it reads that are variables
        self.depth: dict[str, int] = {}
        self.shapes: dict[str, int] = {}
        self.types = {i.name: i.type for i in g.inputs} | {op.name: op.type for op in g.ops}
        self.ranks = {v: t.rank for v, t in self.types.items() if isinstance(t, TensorType)}
        self.from_child: dict[str, str] = {}  # value -> child whose call it derives from (through its first input)
        self.pos = -1
        self.inline_args: dict[str, list[str]] = {}
        self.namer = ValueNamer(reserved, self._dead)
        self.loops: dict[int, Loop] = {}
        if special.items is not None and special.flag is None:
            self.loops = find_loops(g, special.items, frozenset(special.optional))
        self.in_loop = {op.name for lp in self.loops.values() for op in g.ops[lp.first:lp.last + 1]}
        if special.rolled and not any(lp.grows is not None and not lp.container for lp in self.loops.values()):
            raise EmitError("internal: a class shared by blocks with different numbers of children must loop "
                            "over them, and no such loop was found in its forward; please report this model")
        for inp in g.inputs:
            if inp.name in special.attrs:
                ctx.values[inp.name] = Code(special.attrs[inp.name])
            else:
                ctx.values[inp.name] = Code(self.namer.input(inp.name, MODULE_GLOBALS | reserved))

    def _dead(self, value: str) -> bool:
        """True if nothing reads ``value`` after the statement at ``self.pos``."""
        if value in self.pending:
            return False
        for u in self.users.get(value, []):
            if u == "<output>" or self.index[u] > self.pos or u in self.pending:
                return False
        return True

    def _reads(self, op: Op) -> list[str]:
        """Variables (not inlined values) the statement for ``op`` reads, in order."""
        out: list[str] = []
        for r in op.reads():
            out += sorted(self.pending[r]) if r in self.pending else [r]
        return [r for r in dict.fromkeys(out) if r not in self.special.attrs]

    def _consume(self, op: Op) -> None:
        stack = list(op.reads())
        while stack:
            r = stack.pop()
            if r in self.pending:
                self.pending.pop(r)
                stack += self.inline_args.get(r, [])

    def lines(self) -> list[str]:
        """All statements, ending in ``return``."""
        out: list[str] = []
        indent = ""
        flag = self.special.flag
        skip_to = -1
        for i, op in enumerate(self.g.ops):
            self.pos = i
            if i <= skip_to:
                continue
            if i in self.loops:
                out += self._loop(self.loops[i])
                skip_to = self.loops[i].last
                continue
            sizes = self._size_run(i)
            if sizes > 1:
                out += self._unpack(i, sizes)
                skip_to = i + sizes - 1
                continue
            if flag is not None and i == flag[0]:
                out.append(f"if {flag[1]}:")
                indent = "    "
            out += [indent + ln for ln in self._op(i, op, self.width - len(indent))]
        if flag is not None:
            return out + [f"return {self.ctx.values[flag[2]].text}"]
        if self.g.output == Const(None):
            return out or ["pass"]
        return out + wrap(f"return {arg_code(self.g.output, self.ctx).text}", self.width)

    def _inline_ok(self, i: int, op: Op, code: Code) -> bool:
        uses = self.users.get(op.name, [])
        flag = self.special.flag
        user = self.ops.get(uses[0]) if len(uses) == 1 else None
        if user is not None and augmented_symbol(user) and user.args[0] == Ref(op.name):
            return False  # ``out += identity`` needs ``out`` to be a variable
        if len(uses) != 1 or op.name in self.special.optional or uses[0] in self.in_loop:
            return False
        if flag is not None and (op.name == flag[2] or i == len(self.g.ops) - 1):
            return False
        movable = self.stable and is_movable(op, self.ops, self.tuples)
        if flag is not None and not movable and (i < flag[0] <= self.index.get(uses[0], i)):
            return False
        if uses[0] == "<output>":
            return (i == len(self.g.ops) - 1 or movable) and refs_in(self.g.output).count(op.name) == 1
        nxt = self.g.ops[i + 1].name if i + 1 < len(self.g.ops) else None
        depth = self.depth[op.name]
        deep_ok = depth < MAX_DEPTH or (depth == MAX_DEPTH and _calls(self.ops[uses[0]]) == 0)  # `f(g(h(x))) * 2`
        return (uses[0] == nxt or movable) and len(code.text) <= min(MAX_INLINE, self.width - 16) and deep_ok

    def _op(self, i: int, op: Op, width: int) -> list[str]:
        if isinstance(op.target, Guard):
            return self._guard(op)
        symbol = augmented_symbol(op)
        if symbol is not None:
            target = arg_code(op.args[0], self.ctx).text
            if target.isidentifier():
                line = f"{target} {symbol} {arg_code(op.args[1], self.ctx).text}"
                self._consume(op)
                self.depth[op.name] = 0
                self.ctx.values[op.name] = Code(self.namer.take(op.name, target))
                return wrap(line, width)
        code = self._code(op)
        self._note_child(op)
        rank = shape_source(op, self.types)
        if rank is not None:
            self.shapes[op.name] = rank
        self.depth[op.name] = _calls(op) + max((self.depth.get(r, 0) for r in op.reads() if r in self.pending),
                                               default=0)
        if not self.users.get(op.name):
            self._consume(op)
            return wrap(code.text, width)
        if self._inline_ok(i, op, code):
            self.inline_args[op.name] = [r for r in op.reads() if r in self.pending]
            self.pending[op.name] = set(self._reads(op))
            self.ctx.values[op.name] = code
            return []
        reads = self._reads(op)
        self._consume(op)
        var = self._name(i, op, reads, width - 3 - len(code.text))
        self.ctx.values[op.name] = Code(var)
        return wrap(f"{var} = {code.text}", width)

    def _note_child(self, op: Op) -> None:
        """Remember the child a value comes from when three or more child calls read one input (``query``,
        ``key``, ``value`` of one hidden state; Inception's branches): such values take the child's name."""
        t = op.target
        if isinstance(t, ChildCall) and op.args and isinstance(op.args[0], Ref):
            readers = [u for u in self.users.get(op.args[0].name, []) if u in self.ops
                       and isinstance(self.ops[u].target, ChildCall)]
            if len(readers) >= 3 and child_word(t.path):
                self.from_child[op.name] = child_word(t.path)
        elif relayout(op) and isinstance(op.args[0], Ref) and op.args[0].name in self.from_child:  # a view of it
            src = op.args[0].name
            if self.users.get(src) == [op.name] and _same_kind(self.types, src, op.name):
                self.from_child[op.name] = self.from_child[src]

    def _main_input(self, op: Op) -> str | None:
        """The variable an op's first argument comes from, through values written inline: ``x`` for
        ``x.view(...).transpose(1, 2)`` (not ``v`` in ``x.reshape(v.size(0))``); None when there is none."""
        while op.args:
            refs = refs_in(op.args[0])
            if not refs:
                return None
            if refs[0] in self.namer.var_of:  # a variable (the rest was written inline)
                return refs[0]
            if refs[0] not in self.ops:
                return None
            op = self.ops[refs[0]]
        return None

    def _guard(self, op: Op) -> list[str]:
        """A guard's ``if``/``raise``; a comparison read only by it is written into the test, negated."""
        src = op.args[0]
        cond = self.ops.get(src.name) if isinstance(src, Ref) and src.name in self.pending else None
        if cond is not None and not negatable(cond):
            cond = None
        lines = guard_lines(op, cond, self.ctx)
        self._consume(op)
        return lines

    def _code(self, op: Op) -> Code:
        child = self.special.optional.get(op.name)
        if child is None:
            return op_code(op, self.ctx)
        member = self.ctx.accessor(child)
        arg = arg_code(op.args[0], self.ctx).text
        return Code(f"{member}({arg}) if {member} is not None else {arg}", 0)

    def _name(self, i: int, op: Op, reads: list[str], room: int = WIDTH) -> str:
        """The variable for ``op``'s value; ``room``: the characters its statement has left for the name
        (a source variable that would wrap a statement ``out`` keeps on one line is passed over)."""
        flag = self.special.flag
        if flag is not None and i == len(self.g.ops) - 1:
            return self.namer.take(op.name, self.ctx.values[flag[2]].text)
        own = specific(op, self.shapes, self.ranks)
        cands: list[str] = [c for c in (chosen(op), self.from_child.get(op.name)) if c]
        if op.name in self.special.optional:
            cands.append("identity")
        source = source_name(op)
        if len(source) > room >= len(GENERIC):
            source = ""
        cands += [c for c in (own, source) if c]  # what it is, then the original's variable
        mine = self.from_child.get(op.name)
        main = self._main_input(op) if reads else None
        if (own is None and main is not None and self._dead(main) and _same_kind(self.types, main, op.name)
                and self.from_child.get(main, mine) == mine):  # ``query`` does not name the attention output
            cands.append(self.namer.var_of[main])  # carries on from its (now dead) main input
        word = hint(op)
        word = word if word in ("", "item") else f"{word}_{own or GENERIC}"
        if own is None and isinstance(op.target, ChildCall) and len(set(self.users[op.name])) > 1:
            cands += [word, GENERIC]  # a child's output used in several places keeps the child's name
        else:
            cands += [own or GENERIC, word]
        return self.namer.pick(op.name, [c for c in cands if c])


def _calls(op: Op) -> int:
    """1 for a call (it nests visibly), 0 for operators, attribute reads and subscripts."""
    t = op.target
    if isinstance(t, (ChildCall, MethodCall, PrimCall)):
        return 1
    if isinstance(t, FunctionCall):
        return 0 if is_operator(op) or is_kind(op, OpKind.GETATTR) else 1
    return 0


def _same_kind(types: dict[str, ValueType], a: str, b: str) -> bool:
    ka, kb = (None if types.get(v) in (None, UNKNOWN) else isinstance(types.get(v), TensorType) for v in (a, b))
    return ka is None or kb is None or ka == kb


def graph_lines(g: Graph, accessor: Callable[[str], str], reserved: frozenset[str], imports: set[str],
                special: Special | None = None, width: int = WIDTH) -> list[str]:
    """Statements computing ``g`` (ending in ``return``), without indentation, wrapped to ``width``.

    Values take the names the original source gave them (``Op.source_var``) unless that costs
    lines: a long name that wraps a statement ``out`` kept on one line is passed over."""
    def render(graph: Graph) -> list[str]:
        return _Writer(graph, ExprContext({}, accessor, imports), reserved, special or Special(), width).lines()

    if special is None or special.flag is None:  # a flag marks an op by its index: keep every op there
        g = simplified(g)  # idioms written as what they compute (ir/idioms.py)
    g = prune(g)
    lines = render(g)
    hinted = [i for i, op in enumerate(g.ops) if op.source_var]
    if not hinted or len(render(without_source_names(g, hinted))) >= len(lines):
        return lines
    for i in hinted:  # pass over, one by one, the names that cost lines
        trial = without_source_names(g, [i])
        shorter = render(trial)
        if len(shorter) < len(lines):
            g, lines = trial, shorter
    return lines


def input_names(g: Graph, reserved: frozenset[str], special: Special | None = None) -> dict[str, str]:
    """The emitted names of the graph's (parameter) inputs, as ``graph_lines`` gives them."""
    attrs = special.attrs if special is not None else {}
    namer = ValueNamer(reserved, lambda v: False)
    return {i.name: namer.input(i.name, MODULE_GLOBALS | reserved) for i in g.inputs if i.name not in attrs}
