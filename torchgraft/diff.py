"""Before/after views of a rewrite: a unified text diff and pictures with the changes highlighted.

Changes are found by drawing both models (``backends.graph.picture``) and comparing
what is drawn, node by node: a node whose label (name, kind, type) differs is
*changed*, one only in the new model is *added*, one only in the old model is
*removed*. Types are left out of the comparison: a type that changes because an
earlier node changed is a consequence, not a change of its own. Node ids are module
paths (``stem.1``) and op paths (``blocks.0.relu_1``), so a functional ``F.relu``
swapped inside a Block shows up as well as a layer.

::

    result = torchgraft.passes.run(model, "fuse-conv-bn")
    d = diff_models(model, result.model)
    print(d.text)                     # unified diff of the two text forms
    dot = d.to_dot(depth=2)           # before and after side by side, changes coloured
"""

from __future__ import annotations

import difflib
import html
from dataclasses import dataclass, field

from torchgraft.backends.graph import (
    Picture,
    dot_document,
    dot_escape,
    dot_lines,
    html_page,
    mermaid_escape,
    mermaid_lines,
    picture,
)
from torchgraft.ir.model import Model


def text_diff(before: Model, after: Model, context: int = 3) -> str:
    """A unified diff of the two models' text forms (empty when they print the same)."""
    lines = difflib.unified_diff(str(before).splitlines(), str(after).splitlines(), "before", "after",
                                 lineterm="", n=context)
    return "\n".join(lines)


def _labels(pic: Picture) -> dict[str, tuple[str, ...]]:
    """What identifies a drawn thing, types left out (a changed type follows from a changed node)."""
    out = {nid: (n.role, n.kind, *(x for x in n.label if x != n.type)) for nid, n in pic.nodes.items()}
    out.update({cid: ("cluster", c.label) for cid, c in pic.clusters.items()})
    return out


@dataclass
class ModelDiff:
    """What differs between two models: node ids changed/added/removed, and the text diff."""

    before: Model
    after: Model
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def empty(self) -> bool:
        """True when nothing drawn differs."""
        return not (self.changed or self.added or self.removed)

    def summary(self, limit: int = 12) -> str:
        """One line per kind of change, listing the first ``limit`` node ids."""
        if self.empty:
            return "no changes"
        lines = []
        for what, ids in (("changed", self.changed), ("added", self.added), ("removed", self.removed)):
            if ids:
                more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
                lines.append(f"{what} ({len(ids)}): {', '.join(ids[:limit])}{more}")
        return "\n".join(lines)

    def marks(self, pic: Picture, side: str) -> dict[str, str]:
        """Highlights for the ``before`` or ``after`` picture, mapped to what that picture draws."""
        own, own_kind = (self.removed, "removed") if side == "before" else (self.added, "added")
        kinds = {**dict.fromkeys(self.changed, "changed"), **dict.fromkeys(own, own_kind)}
        out: dict[str, str] = {}
        for nid, kind in kinds.items():
            drawn = _drawn(pic, nid)
            if drawn is not None:
                out.setdefault(drawn, kind if drawn == nid else "changed")
        return out

    def to_dot(self, depth: int | None = None) -> str:
        """Before and after side by side as one DOT digraph, changes coloured."""
        body = []
        for side, model in (("before", self.before), ("after", self.after)):
            pic = picture(model, depth)
            body += [f"  subgraph cluster_{side} {{",
                     f'    graph [label="{dot_escape(side + ": " + model.name)}", style=dashed, color="#cbd5e1"];',
                     *dot_lines(pic, side[0] + "_", self.marks(pic, side), "    "), "  }"]
        return dot_document(f"{self.before.name}: before / after", body)

    def to_mermaid(self, depth: int | None = None) -> str:
        """Before and after as two Mermaid subgraphs, changes coloured."""
        lines = ["flowchart TB"]
        for side, model in (("before", self.before), ("after", self.after)):
            pic = picture(model, depth)
            lines += [f'  subgraph g_{side}["{mermaid_escape(side + ": " + model.name)}"]',
                      *mermaid_lines(pic, side[0] + "_", self.marks(pic, side), "    "), "  end"]
        return "\n".join(lines) + "\n"

    def to_html(self, depth: int | None = None) -> str:
        """A self-contained page: the before/after picture, the change list and the text diff."""
        extra = (f"<h2>Changes</h2>\n<pre>{html.escape(self.summary(limit=1000))}</pre>\n"
                 f"<h2>Text diff</h2>\n<pre>{html.escape(self.text or '(the text forms are the same)')}</pre>")
        return html_page(f"{self.before.name}: before / after", self.to_dot(depth), self.to_mermaid(depth), extra)


def _drawn(pic: Picture, nid: str) -> str | None:
    """``nid`` if the picture draws it, else its nearest drawn ancestor (a collapsed block or cluster)."""
    cut = nid
    while True:
        if cut in pic.nodes or cut in pic.clusters:
            return cut
        cut = cut.split("#", 1)[0].split("@", 1)[0]
        pos = max(cut.rfind("."), cut.rfind("/"))
        if pos < 0:
            return "" if "" in pic.nodes else None
        cut = cut[:pos]


def diff_models(before: Model, after: Model) -> ModelDiff:
    """Compare two models (usually one before and after a pipeline) node by node and as text."""
    a, b = _labels(picture(before)), _labels(picture(after))
    changed = [k for k in b if k in a and a[k] != b[k]]
    added = [k for k in b if k not in a]
    removed = [k for k in a if k not in b]
    return ModelDiff(before, after, changed, added, removed, text_diff(before, after))
