"""``frontends.guard_source.skipped_expand`` reads only the exact ``if n != x.shape[0]: x = x.expand(n, -1)``,
and ``ir.ranks.static_rank`` answers only for ranks no input decides."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from tests.frontends import guard_lib
from torchgraft.frontends.guard_source import skipped_expand
from torchgraft.ir.graph import FunctionCall, Graph, Input, MethodCall, Op
from torchgraft.ir.types import TensorType
from torchgraft.ir.values import Const, Ref


def _site(fn: object, text: str) -> str:
    lines, first = inspect.getsourcelines(fn)  # type: ignore[arg-type]
    at = next(i for i, line in enumerate(lines) if text in line)
    return f"{inspect.getsourcefile(fn)}:{first + at}"  # type: ignore[arg-type]


def test_the_transformers_spelling_is_read() -> None:
    assert skipped_expand(_site(guard_lib.positions_named, "if batch_size")) == (1, 2)


@pytest.mark.parametrize("body", [
    "if n != x.shape[0]:\n    x = x.expand(n, -1)\nelse:\n    x = x + 1\n",  # an else branch
    "if n != x.shape[0]:\n    x = x.expand(n, -1)\n    y = 1\n",  # more than the assignment
    "if n != x.shape[0]:\n    x = x.expand(m, -1)\n",  # another size
    "if n != x.shape[1]:\n    x = x.expand(n, -1)\n",  # another dim
    "if n != x.shape[0]:\n    y = x.expand(n, -1)\n",  # another name
    "if n != x.shape[0]:\n    x = x.expand(n, 3)\n",  # a fixed size
    "if n == x.shape[0]:\n    x = x.expand(n, -1)\n",  # another comparison
    "if f() != x.shape[0]:\n    x = x.expand(f(), -1)\n",  # a call, maybe another value
])
def test_anything_else_is_not(body: str, tmp_path: Path) -> None:
    path = tmp_path / "lib.py"
    path.write_text(body)
    assert skipped_expand(f"{path}:1") is None
    assert skipped_expand(f"{tmp_path / 'missing.py'}:1") is None
    assert skipped_expand("no line") is None


def test_static_rank() -> None:
    from torchgraft.ir.ranks import static_rank

    g = Graph((Input("x", TensorType(("N", 4))),), (
        Op("n", MethodCall("size"), (Ref("x"), Const(1))),
        Op("r", FunctionCall("torch.arange"), (Ref("n"),)),
        Op("p", MethodCall("add"), (Ref("r"), Const(0))),
        Op("u", MethodCall("unsqueeze"), (Ref("p"), Const(0))),
        Op("e", MethodCall("expand"), (Ref("u"), Const(2), Const(-1))),
        Op("s", MethodCall("add"), (Ref("u"), Ref("x"))),  # broadcasting with an input: not fixed
        Op("y", MethodCall("unsqueeze"), (Ref("x"), Const(0))),  # an input's rank + 1: not fixed
        Op("d", MethodCall("view"), (Ref("x"), Const(torch.int32))),  # a dtype view keeps x's rank: not fixed
        Op("w", MethodCall("view"), (Ref("u"), Ref("n"), Const(-1))),  # sizes listed: 2
    ), Ref("e"))
    assert [static_rank(g, v) for v in ("r", "p", "u", "e", "s", "y", "x", "d", "w")] == \
        [1, 1, 2, 2, None, None, None, None, 2]
