"""Helper copies reuse source work across captures, and only while it is exactly what a fresh copy makes."""

from __future__ import annotations

import importlib
import linecache
import os
import sys
from pathlib import Path

import pytest

from torchgraft.frontends import source_cache
from torchgraft.frontends.helpers import collect
from torchgraft.ir.model import Helper

SRC = '''import torch

def f(x):
    return x + {}


def g(x):
    return f(x) * 2
'''


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    path = tmp_path / "cached_helpers_mod.py"
    path.write_text(SRC.format(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("cached_helpers_mod")
    yield mod, path
    sys.modules.pop("cached_helpers_mod", None)


def test_a_file_changed_on_disk_is_read_again(module) -> None:  # type: ignore[no-untyped-def]
    mod, path = module
    first: dict[str, Helper] = {}
    collect(mod.f, first)
    assert "x + 1" in first["f"].source
    path.write_text(SRC.format(22))  # another size: linecache sees the change, as inspect would
    os.utime(path, (1, 1))
    again: dict[str, Helper] = {}
    collect(mod.f, again)
    assert "x + 22" in again["f"].source  # what inspect.getsource reads now, cache or not
    linecache.checkcache(str(path))


def test_renamed_copies_are_not_taken_from_the_cache(module) -> None:  # type: ignore[no-untyped-def]
    mod, _ = module
    plain: dict[str, Helper] = {}
    collect(mod.g, plain)
    clash = {"f": Helper("f", "def f(x):\n    return x\n", "elsewhere.f")}  # another helper called f
    renamed = dict(clash)
    assert collect(mod.g, renamed) == "g"
    assert "f_2(x) * 2" in renamed["g"].source and "def f_2" in renamed["f_2"].source
    again: dict[str, Helper] = {}
    collect(mod.g, again)
    assert again == plain and "return f(x) * 2" in again["g"].source  # the cache kept the unrenamed copy
    alone: dict[str, Helper] = {}
    edits = source_cache.edits()
    collect(mod.f, alone)
    assert source_cache.edits() == edits and alone["f"] == plain["f"]
