"""DOT/Mermaid/HTML pictures of the IR: clusters, depth, data-flow edges, highlights, escaping."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import torchgraft
from torchgraft import ir
from torchgraft.backends import graph
from torchgraft.backends.graph import GraphvizError, picture, render, to_dot, to_html, to_mermaid
from torchgraft.diff import diff_models
from torchgraft.examples.nets import example
from torchgraft.hand import build_model

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")


@pytest.fixture(scope="module")
def net() -> ir.Model:
    model, args = example()
    return torchgraft.capture(model, args)


@pytest.fixture(scope="module")
def weird() -> ir.Model:
    from tests.cli_models import weird_names

    model, args = weird_names()
    return torchgraft.capture(model, args)


def test_picture_follows_the_forward(net: ir.Model) -> None:
    pic = picture(net)
    assert set(pic.clusters) == {"stem", "blocks", "blocks.0", "blocks.1"}
    assert pic.nodes["blocks.0.conv1"].parent == "blocks.0"
    assert pic.nodes["blocks.0.conv1"].type == "f32[N, 16, 32, 32]"
    edges = set(pic.edges)
    chain = ["input:x", "stem.0", "stem.1", "stem.2", "blocks.0.conv1", "blocks.0.bn1", "blocks.0.relu"]
    assert all((a, b) in edges for a, b in zip(chain[:-1], chain[1:], strict=True))
    assert ("blocks.0.bn2", "blocks.0.add") in edges and ("stem.2", "blocks.0.add") in edges  # the skip
    assert ("blocks.0.relu_1", "blocks.1.conv1") in edges and ("fc", "output") in edges
    assert pic.edges[("pool", "flatten")] == "f32[N, 16, 1, 1]"


def test_depth_collapses_blocks(net: ir.Model) -> None:
    pic = picture(net, depth=1)
    assert not pic.clusters
    assert pic.nodes["blocks"].role == "collapsed" and "blocks.0.conv1" not in pic.nodes
    assert ("stem", "blocks") in pic.edges and ("blocks", "pool") in pic.edges
    assert list(picture(net, depth=0).nodes) == ["input:x", "", "output"]
    with pytest.raises(ValueError, match="depth"):
        picture(net, depth=-1)


def test_combinator_bodies_draw_combine_nodes() -> None:
    body = ir.Chain(ir.Conv2d(3, 4, 3, padding=1),
                    ir.SkipConnection(ir.Chain(ir.ReLU(), ir.Conv2d(4, 4, 1)), "add"),
                    ir.Parallel((ir.Conv2d(4, 2, 1), ir.Conv2d(4, 2, 1)), ir.Combine("cat", 1)))
    model = build_model(body, ir.TensorType(("N", 3, 8, 8)))
    pic = picture(model)
    combines = [n for n in pic.nodes.values() if n.role == "combine"]
    assert sorted(n.label[0] for n in combines) == ["add", "cat(dim=1)"]
    assert ("0", "1/add") in pic.edges and ("1.body.1", "1/add") in pic.edges
    assert ("2.0", "2/cat(dim=1)") in pic.edges and ("2/cat(dim=1)", "output") in pic.edges


def test_dot_and_mermaid_text(net: ir.Model) -> None:
    dot = to_dot(net, depth=2)
    assert dot.startswith('digraph "Net" {') and dot.rstrip().endswith("}")
    assert dot.count("subgraph cluster_") == 2 and 'label="conv1' not in dot
    mermaid = to_mermaid(net)
    assert mermaid.startswith("flowchart TB\n")
    assert len(re.findall(r"(?m)^\s*subgraph ", mermaid)) == len(re.findall(r"(?m)^\s*end$", mermaid)) == 4


def test_highlight(net: ir.Model) -> None:
    dot = to_dot(net, highlight={"blocks.0.conv1": "added", "stem": "changed", "blocks.1.bn2": "removed"})
    assert "#bbf7d0" in dot and "#fecaca" in dot and "#d97706" in dot
    mermaid = to_mermaid(net, highlight=["stem.0"])
    assert re.search(r"class n\d+ changed", mermaid)


def test_labels_are_escaped(weird: ir.Model) -> None:
    dot = to_dot(weird)
    for line in dot.splitlines():
        if " [label=" in line:  # one statement per line; outside the quoted strings, no stray text
            assert line.rstrip().endswith("];"), line
            rest = re.sub(r'"(?:[^"\\]|\\.)*"', "S", line)
            assert '"' not in rest and "<" not in rest and "\\" not in rest, line
    assert 'a\\"b' in dot and "i\\\\j" in dot and "c\\\\nd" in dot
    mermaid = to_mermaid(weird)
    for line in mermaid.splitlines():
        if '["' in line:
            inner = line.split('["', 1)[1].rsplit('"]', 1)[0]
            assert '"' not in inner and "<" not in inner.replace("<br/>", "")
    page = graph.html_page('<script>alert("x")</script>', to_dot(weird), mermaid)
    assert "<script>" not in page


@needs_dot
def test_escaped_labels_render(weird: ir.Model) -> None:
    svg = render(to_dot(weird)).decode()
    assert "&lt;e&gt;&amp;" in svg and ("a&quot;b" in svg or 'a"b' in svg)
    proc = subprocess.run(["dot", "-Tsvg"], input=to_dot(weird, depth=0).encode(), capture_output=True)
    assert proc.returncode == 0


@needs_dot
def test_svg_and_html(net: ir.Model) -> None:
    svg = render(to_dot(net), "svg").decode()
    assert "<svg" in svg and "blocks.0.conv1" in svg
    page = to_html(net)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<?xml" not in page


def test_without_graphviz(net: ir.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GraphvizError, match="install Graphviz"):
        render(to_dot(net))
    page = to_html(net)
    assert "flowchart TB" in page and "Graphviz" in page and "<svg" not in page


def test_diff_marks_changed_added_removed(net: ir.Model) -> None:
    after = torchgraft.passes.run(net, "swap-activation{from=relu to=silu},fuse-conv-bn").model
    d = diff_models(net, after)
    assert {"stem.0", "stem.1", "stem.2"} <= set(d.changed)
    assert "blocks.0.bn1" in d.removed and "blocks.1.bn2" in d.removed
    assert "blocks.0.relu_1" in d.removed + d.changed
    assert not diff_models(net, net).changed and diff_models(net, net).empty
    collapsed = d.marks(picture(after, depth=1), "after")
    assert collapsed.get("blocks") == "changed" and collapsed.get("stem") == "changed"
    assert "cluster_before" in d.to_dot(depth=1) and "g_after" in d.to_mermaid()
    assert "Text diff" in d.to_html(depth=1)
