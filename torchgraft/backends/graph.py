"""Pictures of the hierarchical IR: Graphviz DOT, Mermaid, SVG and a self-contained HTML page.

Blocks and Chains become clusters (DOT) or subgraphs (Mermaid); below ``depth`` a
composite node is drawn as one box. Layers and ops are nodes labelled with their name,
kind and output type (``model.type_at(path)``); edges follow the forward data flow:
the ops of each Block's Graph, the order of a Chain, the branches of a Parallel and the
skip of a SkipConnection. ``highlight`` marks node ids (module paths such as
``blocks.0.conv1``, op paths such as ``blocks.0.relu_1``) as changed/added/removed,
which is how ``torchgraft diff`` shows a pass's effect.

A Block whose forward differs in training is drawn with its eval forward: layers only
the training forward calls (auxiliary heads) stand unconnected. A layer called twice
(a shared ``nn.ReLU``) gets one node per call, so the flow stays acyclic.

Every label is escaped: names come from models, and quotes, newlines, ``<`` or ``>``
in them cannot break the DOT, Mermaid or HTML text. Node ids in the output are
generated (``n0``, ``n1``, ...); the module path is kept as the DOT tooltip.

::

    from torchgraft.backends.graph import to_dot, to_mermaid, render
    svg = render(to_dot(model, depth=2), "svg")     # needs Graphviz's ``dot`` on PATH
"""

from __future__ import annotations

import html
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from torchgraft.errors import TorchgraftError
from torchgraft.ir.graph import ChildCall, FunctionCall, GetAttr, Graph, InputKind, MethodCall, Op, PrimCall
from torchgraft.ir.lower import CAPTURED_METHODS, is_structural, typed_lowering
from torchgraft.ir.model import Model
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
from torchgraft.ir.opkinds import OpKind, is_kind
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.printer import format_op, kind_label
from torchgraft.ir.traverse import join, node_at, walk
from torchgraft.ir.types import UNKNOWN
from torchgraft.ir.values import refs_in

MAX_LABEL = 56
STYLES = {"changed": "#fde68a", "added": "#bbf7d0", "removed": "#fecaca"}
"""Fill colours of highlighted nodes, by highlight kind."""
BORDERS = {"changed": "#d97706", "added": "#16a34a", "removed": "#dc2626"}
"""Border colours of highlighted clusters, by highlight kind."""

Highlight = Mapping[str, str] | Iterable[str] | None
"""Node ids to highlight: an iterable (all "changed") or a mapping id → "changed"/"added"/"removed"."""

Producers = list[str]


class GraphvizError(TorchgraftError):
    """Graphviz's ``dot`` is missing or failed; the message says what to install or use instead."""


@dataclass
class PicNode:
    """One drawn node: a layer, a collapsed block, an op, a combine, an input or the output."""

    id: str
    label: tuple[str, ...]
    role: str
    kind: str = ""
    type: str = ""
    params: int = 0
    parent: str | None = None


@dataclass
class Cluster:
    """An expanded Block/Chain/Parallel/SkipConnection/Container: drawn as a box around its children."""

    id: str
    label: str
    kind: str
    type: str = ""
    params: int = 0
    parent: str | None = None


@dataclass
class Picture:
    """What is drawn, independent of the output format: nodes, clusters and typed edges."""

    name: str
    nodes: dict[str, PicNode] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    edges: dict[tuple[str, str], str] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)
    """("node" | "cluster", id) in drawing order."""


def printable(name: str) -> str:
    """A name with line breaks and tabs shown as ``\\n``, ``\\r``, ``\\t``, so one name stays one line."""
    return str(name).replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def short(text: str, limit: int = MAX_LABEL) -> str:
    """``text`` on one line, cut to ``limit`` characters with ``...``."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_counts(model: Model) -> dict[str, int]:
    """Parameter elements under every module path ("" is the whole model); buffers and tied aliases excluded."""
    buffers: set[str] = set()
    for path, node in walk(model.root):
        if isinstance(node, Primitive):
            buffers |= {join(path, n) for n, _, is_param in node.state() if not is_param}
        elif isinstance(node, (Block, Opaque)):
            buffers |= {join(path, s.name) for s in node.state if not s.parameter}
    tied = [alias for alias, _ in model.ties]
    counts: dict[str, int] = {}
    for key, value in model.weights.items():
        if key in buffers or any(key == a or key.startswith(a + ".") for a in tied):
            continue
        parts = key.split(".")
        n = math.prod(getattr(value, "shape", ()))
        for i in range(len(parts)):
            prefix = ".".join(parts[:i])
            counts[prefix] = counts.get(prefix, 0) + n
    return counts


def _op_kind(op: Op) -> str:
    t = op.target
    if isinstance(t, FunctionCall):
        return t.qualname.replace("torch.nn.functional.", "F.").replace("operator.", "").replace("builtins.", "")
    if isinstance(t, MethodCall):
        return f"Tensor.{t.name}"
    if isinstance(t, PrimCall):
        return t.prim.op
    if isinstance(t, GetAttr):
        return "attribute"
    return type(t).__name__


_COMPOSITE = (Block, Chain, Parallel, SkipConnection, Container)


class _Builder:
    """Draws a model: ``draw`` creates nodes and clusters, ``call`` adds the data-flow edges."""

    def __init__(self, model: Model, depth: int | None) -> None:
        self.model = model
        self.depth = depth
        self.types = {p: ("" if t == UNKNOWN else str(t)) for p, t in model.types}
        self.params = param_counts(model)
        self.pic = Picture(model.name)
        self.extra = 0
        self.calls: dict[str, int] = {}

    def build(self) -> Picture:
        root = self.model.root
        args: list[Producers] = []
        kwargs: dict[str, Producers] = {}
        for inp in self.model.inputs:
            nid = f"input:{inp.name}"
            text = "" if inp.type == UNKNOWN else str(inp.type)
            self.add(PicNode(nid, (f"input {inp.name}", text), "input", "input", text))
            if inp.kind is InputKind.KEYWORD:
                kwargs[inp.name] = [nid]
            else:
                args.append([nid])
        if not self.model.inputs:  # a captured Chain root: the signature is not recorded
            args.append([self.add(PicNode("input", ("input",), "input", "input"))])
        self.draw("", root, 0, None)
        out = self.call("", root, args, kwargs)
        out_type = "" if self.model.output_type == UNKNOWN else str(self.model.output_type)
        self.add(PicNode("output", ("output", out_type), "output", "output", out_type))
        self.connect(out, "output")
        return self.pic

    # drawing -----------------------------------------------------------------------------

    def expanded(self, node: Node, level: int) -> bool:
        return isinstance(node, _COMPOSITE) and (self.depth is None or level < self.depth)

    def add(self, node: PicNode) -> str:
        if node.id in self.pic.nodes or node.id in self.pic.clusters:
            self.extra += 1
            node.id = f"{node.id}#{self.extra}"
        self.pic.nodes[node.id] = node
        self.pic.order.append(("node", node.id))
        return node.id

    def draw(self, path: str, node: Node, level: int, parent: str | None) -> None:
        name = printable(path.rsplit(".", 1)[-1] if path else self.model.name)
        kind = kind_label(node)
        if self.expanded(node, level):
            if path:
                label = short(f"{name}: {kind}", MAX_LABEL + 20)
                self.pic.clusters[path] = Cluster(path, label, kind, self.types.get(path, ""),
                                                  self.params.get(path, 0), parent)
                self.pic.order.append(("cluster", path))
            inner = path if path else None
            for child_name, child in module_children(node):
                self.draw(join(path, child_name), child, level + 1, inner)
            return
        role = "opaque" if isinstance(node, Opaque) else "collapsed" if isinstance(node, _COMPOSITE) else "module"
        t = self.types.get(path, "")
        lines = tuple(x for x in (name, short(kind), t) if x)
        self.add(PicNode(path, lines, role, kind, t, self.params.get(path, 0), parent))

    def connect(self, sources: Iterable[str], dst: str) -> None:
        for src in sources:
            if src != dst and src in self.pic.nodes:
                self.pic.edges.setdefault((src, dst), self.pic.nodes[src].type)

    # calling (edges) ---------------------------------------------------------------------

    def call(self, path: str, node: Node, args: list[Producers], kwargs: dict[str, Producers]) -> Producers:
        """Edges for one call of the module at ``path``; returns the ids producing its output."""
        if path in self.pic.nodes:
            nid = self.again(path)
            self.connect([p for a in [*args, *kwargs.values()] for p in a], nid)
            return [nid]
        if path and path not in self.pic.clusters:  # below the drawn depth: the nearest drawn ancestor
            return self.call(path.rsplit(".", 1)[0] if "." in path else "", self._drawn_ancestor(path), args, kwargs)
        if isinstance(node, Chain):
            out = args
            for name, item in node.named():
                out = [self.call(join(path, name), item, out, kwargs if out is args else {})]
            return out[0] if out is not args else [p for a in args for p in a]
        if isinstance(node, Parallel):
            outs = [self.call(join(path, n), b, args, kwargs) for n, b in node.named()]
            return self.combine(path, str(node.combine), [p for o in outs for p in o])
        if isinstance(node, SkipConnection):
            body = self.call(join(path, "body"), node.body, args, kwargs)
            return self.combine(path, str(node.combine), body + (args[0] if args else []))
        if isinstance(node, Block):
            return self.flow(node.body, path, node, args, kwargs)
        return [p for a in args for p in a]

    def again(self, path: str) -> str:
        """The node for this call of a layer: a second call (a module used twice) gets its own node."""
        self.calls[path] = self.calls.get(path, 0) + 1
        if self.calls[path] == 1:
            return path
        first = self.pic.nodes[path]
        label = (f"{first.label[0]} (call {self.calls[path]})", *first.label[1:])
        return self.add(PicNode(f"{path}@{self.calls[path]}", label, first.role, first.kind, first.type, 0,
                                first.parent))

    def _owner(self, path: str) -> str:
        """The drawn layer that owns the attribute at ``path`` (``attn.qkv.weight`` → ``attn.qkv``), or ""."""
        while "." in path:
            path = path.rsplit(".", 1)[0]
            if path in self.pic.nodes:
                return path
        return ""

    def _drawn_ancestor(self, path: str) -> Node:
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        node = node_at(self.model.root, parent) if parent else self.model.root
        return node if node is not None else self.model.root

    def combine(self, path: str, what: str, sources: Producers) -> Producers:
        nid = self.add(PicNode(f"{path}/{what}", (what,), "combine", what, "", 0, path or None))
        self.connect(sources, nid)
        return [nid]

    def flow(self, body: Node, path: str, block: Block, args: list[Producers],
             kwargs: dict[str, Producers]) -> Producers:
        """Edges of a Block's body (a Graph, or combinators over ChildRefs). A structure capture stored
        (``ir.stored``) is drawn as its lowering: the same nodes as the forward it was captured from."""
        if body is block.body and is_structural(body) and block.method in CAPTURED_METHODS:
            body = typed_lowering(block, path, self.model.type_at)
        if isinstance(body, Graph):
            return self.graph(body, path, block, args, kwargs)
        if isinstance(body, ChildRef):
            child = node_at(block, body.path)
            return self.call(join(path, body.path), child, args, kwargs) if child is not None else []
        if isinstance(body, Chain):
            out = args
            for item in body.items:
                out = [self.flow(item, path, block, out, kwargs if out is args else {})]
            return out[0] if out is not args else [p for a in args for p in a]
        if isinstance(body, Parallel):
            outs = [self.flow(b, path, block, args, kwargs) for b in body.branches]
            return self.combine(path, str(body.combine), [p for o in outs for p in o])
        if isinstance(body, SkipConnection):
            inner = self.flow(body.body, path, block, args, kwargs)
            return self.combine(path, str(body.combine), inner + (args[0] if args else []))
        if isinstance(body, Primitive):
            nid = self.add(PicNode(f"{path}/{body.op}", (body.label(),), "op", body.op, "", 0, path or None))
            self.connect([p for a in args for p in a], nid)
            return [nid]
        return [p for a in args for p in a]

    def graph(self, g: Graph, path: str, block: Block, args: list[Producers],
              kwargs: dict[str, Producers]) -> Producers:
        env: dict[str, Producers] = {}
        positional = [i for i in g.inputs if i.kind is InputKind.POSITIONAL]
        for i, inp in enumerate(positional):
            env[inp.name] = args[i] if i < len(args) else kwargs.get(inp.name, [])
        for inp in g.inputs:
            env.setdefault(inp.name, kwargs.get(inp.name, []))
        for op in g.ops:
            env[op.name] = self.op(op, path, block, env)
        return [p for r in refs_in(g.output) for p in env.get(r, [])]

    def op(self, op: Op, path: str, block: Block, env: dict[str, Producers]) -> Producers:
        def producers(arg: object) -> Producers:
            return [p for r in refs_in(arg) for p in env.get(r, [])]  # type: ignore[arg-type]

        t = op.target
        if isinstance(t, ChildCall):
            child = node_at(block, t.path)
            if child is not None:
                kw = {k: producers(v) for k, v in op.kwargs}
                return self.call(join(path, t.path), child, [producers(a) for a in op.args], kw)
        if is_kind(op, OpKind.GETITEM) and op.args:
            return [p for a in op.args for p in producers(a)]  # indexing: the values flow through
        if isinstance(t, GetAttr) and self._owner(join(path, t.path)):
            return [self._owner(join(path, t.path))]  # a child layer's weight, used functionally
        t_text = "" if op.type == UNKNOWN else str(op.type)
        role = "attr" if isinstance(t, GetAttr) else "op"
        nid = self.add(PicNode(join(path, op.name), (short(format_op(op)), t_text) if t_text else
                               (short(format_op(op)),), role, _op_kind(op), t_text, 0, path or None))
        self.connect([p for r in op.reads() for p in env.get(r, [])], nid)
        return [nid]


def picture(model: Model, depth: int | None = None) -> Picture:
    """What ``to_dot``/``to_mermaid`` draw: nodes (ids are paths), clusters and typed edges."""
    if depth is not None and depth < 0:
        raise ValueError(f"depth must be >= 0 or None, got {depth}")
    return _Builder(model, depth).build()


def _highlights(highlight: Highlight) -> dict[str, str]:
    if highlight is None:
        return {}
    if isinstance(highlight, Mapping):
        return {k: v if v in STYLES else "changed" for k, v in highlight.items()}
    return dict.fromkeys(highlight, "changed")


def _children(pic: Picture) -> dict[str | None, list[tuple[str, str]]]:
    """Cluster id (None = top) → its ("node"|"cluster", id) members in drawing order."""
    out: dict[str | None, list[tuple[str, str]]] = {}
    for what, key in pic.order:
        parent = pic.clusters[key].parent if what == "cluster" else pic.nodes[key].parent
        out.setdefault(parent if parent in pic.clusters else None, []).append((what, key))
    return out


# DOT ---------------------------------------------------------------------------------------

def dot_escape(text: str) -> str:
    """Text for a double-quoted DOT string: backslashes, quotes and line breaks escaped."""
    text = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return re.sub(r"\r\n|\r|\n", r"\\n", text)


_DOT_SHAPES = {"input": 'shape=oval, fillcolor="#e2e8f0"', "output": 'shape=oval, fillcolor="#e2e8f0"',
               "module": 'fillcolor="#eef2ff"', "collapsed": 'shape=box3d, style=filled, fillcolor="#e0e7ff"',
               "opaque": 'style="filled,dashed", fillcolor="#f1f5f9"', "op": 'style=filled, fillcolor="#f8fafc"',
               "attr": 'shape=note, style=filled, fillcolor="#f8fafc"',
               "combine": 'shape=circle, style=filled, fillcolor="#f1f5f9", fontsize=9, margin=0.02'}


def _nest(members: dict[str | None, list[tuple[str, str]]], parent: str | None, pad: str,
          node: Callable[[str, str], list[str]], cluster: Callable[[str, str, list[str]], list[str]]) -> list[str]:
    """Nodes and clusters under ``parent``, clusters wrapping their members (one walk for DOT and Mermaid)."""
    lines: list[str] = []
    for what, key in members.get(parent, []):
        if what == "node":
            lines += node(key, pad)
        else:
            lines += cluster(key, pad, _nest(members, key, pad + "  ", node, cluster))
    return lines


def dot_lines(pic: Picture, prefix: str = "", highlight: Highlight = None, indent: str = "  ") -> list[str]:
    """The DOT statements for one picture (nodes, clusters, edges); ids start with ``prefix``."""
    marks = _highlights(highlight)
    ids = {nid: f"{prefix}n{i}" for i, nid in enumerate(pic.nodes)}
    cids = {cid: f"cluster_{prefix}{i}" for i, cid in enumerate(pic.clusters)}
    members = _children(pic)

    def node(key: str, pad: str) -> list[str]:
        n = pic.nodes[key]
        style = _DOT_SHAPES.get(n.role, "")
        if key in marks:
            style += f', style="filled,bold", penwidth=2, fillcolor="{STYLES[marks[key]]}"'
        label = dot_escape("\n".join(n.label))
        return [f'{pad}{ids[key]} [label="{label}", tooltip="{dot_escape(key)}", {style}];']

    def cluster(key: str, pad: str, inner: list[str]) -> list[str]:
        color = f'style="rounded,bold", penwidth=2, color="{BORDERS[marks[key]]}"' if key in marks else \
            'style=rounded, color="#94a3b8"'
        head = [f"{pad}subgraph {cids[key]} {{",
                f'{pad}  graph [label="{dot_escape(pic.clusters[key].label)}", tooltip="{dot_escape(key)}", {color}];']
        return head + inner + [f"{pad}}}"]

    lines = _nest(members, None, indent, node, cluster)
    lines += [f"{indent}{ids[a]} -> {ids[b]};" for (a, b) in pic.edges]
    return lines


_DOT_HEAD = ['  graph [rankdir=TB, fontname="Helvetica", fontsize=11, labelloc=t, nodesep=0.25, ranksep=0.3];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, margin="0.12,0.04"];',
             '  edge [color="#64748b", arrowsize=0.6];']


def dot_document(title: str, body: list[str]) -> str:
    """A complete ``digraph`` around DOT statements."""
    return "\n".join([f'digraph "{dot_escape(title)}" {{', *_DOT_HEAD, f'  label="{dot_escape(title)}";',
                      *body, "}"]) + "\n"


def to_dot(model: Model, depth: int | None = None, highlight: Highlight = None) -> str:
    """The model as a Graphviz DOT digraph; ``depth`` collapses deeper Blocks/Chains into one node."""
    return dot_document(model.name, dot_lines(picture(model, depth), highlight=highlight))


# Mermaid -----------------------------------------------------------------------------------

_MERMAID_ENTITIES = {"&": "#38;", "#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "\\": "#92;", "`": "#96;"}


def mermaid_escape(text: str) -> str:
    """Text for a double-quoted Mermaid label: special characters as entity codes, line breaks as ``<br/>``."""
    out = "".join(_MERMAID_ENTITIES.get(ch, ch) for ch in str(text))
    return re.sub(r"\r\n|\r|\n", "<br/>", out)


_MERMAID_SHAPES = {"input": ('(["', '"])'), "output": ('(["', '"])'), "combine": ('(("', '"))'),
                   "collapsed": ('[["', '"]]'), "op": ('("', '")'), "attr": ('[/"', '"/]')}


def mermaid_lines(pic: Picture, prefix: str = "", highlight: Highlight = None, indent: str = "  ") -> list[str]:
    """The Mermaid flowchart statements for one picture; ids start with ``prefix``."""
    marks = _highlights(highlight)
    ids = {nid: f"{prefix}n{i}" for i, nid in enumerate(pic.nodes)}
    cids = {cid: f"{prefix}c{i}" for i, cid in enumerate(pic.clusters)}
    members = _children(pic)

    def node(key: str, pad: str) -> list[str]:
        left, right = _MERMAID_SHAPES.get(pic.nodes[key].role, ('["', '"]'))
        return [f"{pad}{ids[key]}{left}{mermaid_escape(chr(10).join(pic.nodes[key].label))}{right}"]

    def cluster(key: str, pad: str, inner: list[str]) -> list[str]:
        return [f'{pad}subgraph {cids[key]}["{mermaid_escape(pic.clusters[key].label)}"]'] + inner + [f"{pad}end"]

    lines = _nest(members, None, indent, node, cluster)
    lines += [f"{indent}{ids[a]} --> {ids[b]}" for (a, b) in pic.edges]
    for kind, color in STYLES.items():
        nodes = [ids[k] for k, v in marks.items() if v == kind and k in ids]
        if nodes:
            lines += [f"{indent}classDef {kind} fill:{color},stroke:#334155,stroke-width:2px",
                      f"{indent}class {','.join(nodes)} {kind}"]
        lines += [f"{indent}style {cids[k]} stroke:{BORDERS[kind]},stroke-width:2px"
                  for k, v in marks.items() if v == kind and k in cids]
    return lines


def to_mermaid(model: Model, depth: int | None = None, highlight: Highlight = None) -> str:
    """The model as a Mermaid flowchart; ``depth`` collapses deeper Blocks/Chains into one node."""
    return "\n".join(["flowchart TB", *mermaid_lines(picture(model, depth), highlight=highlight)]) + "\n"


# rendering ---------------------------------------------------------------------------------

def has_graphviz() -> bool:
    """Whether Graphviz's ``dot`` is on PATH."""
    return shutil.which("dot") is not None


def render(dot_text: str, fmt: str = "svg", timeout: float = 300) -> bytes:
    """Render DOT text with Graphviz's ``dot`` (``svg``, ``png``, ``pdf``): the file's bytes."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizError(f"rendering {fmt} needs Graphviz's 'dot' program, which is not on PATH; install "
                            "Graphviz (apt-get install graphviz, brew install graphviz, or graphviz.org/download) "
                            "or ask for --format dot / mermaid")
    try:
        proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GraphvizError(f"Graphviz 'dot' took more than {timeout:.0f}s; draw less with --depth") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GraphvizError(f"Graphviz 'dot -T{fmt}' failed: {err[0] if err else 'exit ' + str(proc.returncode)}")
    return proc.stdout


def _inline_svg(svg: bytes) -> str:
    text = svg.decode("utf-8", errors="replace")
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


_CSS = ("body{font-family:Helvetica,Arial,sans-serif;margin:1.5em;color:#0f172a}"
        "pre{background:#f8fafc;border:1px solid #e2e8f0;padding:1em;overflow:auto}"
        ".note{color:#92400e;background:#fffbeb;border:1px solid #fde68a;padding:.5em 1em}"
        "svg{max-width:100%;height:auto}")


def html_page(title: str, dot_text: str, mermaid_text: str, extra: str = "") -> str:
    """A self-contained HTML page: the SVG from ``dot`` when Graphviz is installed, else the Mermaid text.

    ``extra`` is trusted HTML appended below the picture (callers escape what goes into it).
    """
    if has_graphviz():
        body = f'<div class="picture">{_inline_svg(render(dot_text, "svg"))}</div>'
    else:
        body = ('<p class="note">Graphviz\'s <code>dot</code> was not found, so this page shows the Mermaid '
                "source of the picture: install Graphviz for an embedded drawing, or paste the text into any "
                "Mermaid viewer.</p>" f'<pre class="mermaid">{html.escape(mermaid_text)}</pre>')
    t = html.escape(title)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{t} - torchgraft</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n{body}\n{extra}\n</body>\n</html>\n")


def to_html(model: Model, depth: int | None = None, highlight: Highlight = None) -> str:
    """A self-contained HTML page showing the model (SVG via Graphviz, else Mermaid text with a note)."""
    return html_page(model.name, to_dot(model, depth, highlight), to_mermaid(model, depth, highlight))
