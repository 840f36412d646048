"""The JSON form is untrusted input: a crafted file cannot make ``emit()`` write code that runs.

Each test captures a tiny model, writes its JSON, changes one field, and reads it back:
``from_dict`` + ``verify`` + ``emit`` must refuse it with an ``IRError``/``EmitError`` naming
the field, or (for text that is data, like a string constant) write it escaped. The emitted
``model.py`` is then written to a tmp dir, imported, built and run; a canary file in that dir
must never appear.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.backends.torch.emitter import import_file
from torchgraft.errors import EmitError, IRError
from torchgraft.ir.serialize import from_dict, from_json, to_json
from torchgraft.ir.verify import verify

CANARY = "CANARY"
RUN = f"open({CANARY!r}, 'w').write('1')"
"""Code that, if it ever runs, creates the canary file in the current directory (a tmp dir)."""


class Tiny(nn.Module):
    """A Linear child, a functional call, a method call with keyword arguments and a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.flatten(F.relu(self.fc(x)) * 2, 1)
        return y.sum(dim=1, keepdim=True) + 1


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    """The parsed JSON of the captured Tiny."""
    torch.manual_seed(0)
    model = torchgraft.capture(Tiny().eval(), (torch.randn(2, 4),))
    return dict(json.loads(to_json(model)))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / CANARY).exists(), "a canary in the JSON ran"


def _objects(v: Any) -> Iterator[dict[str, Any]]:
    if isinstance(v, dict):
        yield v
        for x in v.values():
            yield from _objects(x)
    elif isinstance(v, list):
        for x in v:
            yield from _objects(x)


def _first(doc: dict[str, Any], pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    return next(o for o in _objects(doc) if pred(o))


def _op(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return _first(doc, lambda o: o.get("node") == "Op" and o.get("name") == name)


def _run(doc: dict[str, Any], tmp_path: Path) -> str:
    """Load, verify, emit, then import model.py, build() and call it: all a user would do."""
    model = from_dict(json.loads(json.dumps(doc)))
    verify(model)
    source = torchgraft.emit(model).source
    path = tmp_path / "model.py"
    path.write_text(source)
    built = import_file(path).build().eval()
    try:
        built(torch.randn(2, 4))
    except Exception:  # noqa: BLE001 - a changed forward may fail; what matters is that nothing ran
        pass
    return source


def _refused(doc: dict[str, Any], tmp_path: Path, *words: str) -> str:
    with pytest.raises((IRError, EmitError)) as info:
        _run(doc, tmp_path)
    text = str(info.value)
    for w in words:
        assert w in text, f"{w!r} not in the message: {text}"
    return text


def test_untampered_round_trip(doc: dict[str, Any], tmp_path: Path) -> None:
    source = _run(copy.deepcopy(doc), tmp_path)
    assert "torch.flatten" in source


@pytest.mark.parametrize("qualname", [
    "os.system", "builtins.exec", "builtins.eval", "builtins.__import__", "__import__", "builtins.open",
    "torch.load", "subprocess.call", "torch.utils.cpp_extension.load_inline", "operator.mul; import os",
    "torch.nn.functional.relu(x) or __import__", "helpers.undefined",
])
def test_function_qualname_outside_the_allow_list(doc: dict[str, Any], tmp_path: Path, qualname: str) -> None:
    d = copy.deepcopy(doc)
    _op(d, "mul")["target"]["qualname"] = qualname
    msg = _refused(d, tmp_path, "mul")
    assert "allow" in msg or "no such helper" in msg


@pytest.mark.parametrize("name", [
    f"x={RUN} or 1, y", "class", "dim)", "", "__import__('os')",
])
def test_keyword_argument_name_not_an_identifier(doc: dict[str, Any], tmp_path: Path, name: str) -> None:
    d = copy.deepcopy(doc)
    _op(d, "sum_1")["kwargs"][0][0] = name
    _refused(d, tmp_path, "sum_1", "keyword")


@pytest.mark.parametrize("name", [f"view(); {RUN}; x.view", "view\n", "for"])
def test_method_name_with_code(doc: dict[str, Any], tmp_path: Path, name: str) -> None:
    d = copy.deepcopy(doc)
    _first(d, lambda o: o.get("node") == "MethodCall")["name"] = name
    _refused(d, tmp_path, "method name")


@pytest.mark.parametrize("text", [
    f"'); {RUN}; ('", f'"); {RUN}; ("', f'"""\n{RUN}\n"""', "a\nb\\", f"\\'; {RUN} #",
])
def test_string_constant_is_escaped(doc: dict[str, Any], tmp_path: Path, text: str) -> None:
    """A str constant is data: it is written as an escaped literal and runs nowhere (the forward then fails or not)."""
    d = copy.deepcopy(doc)
    _op(d, "mul")["args"][1]["value"] = text
    source = _run(d, tmp_path)
    assert any(isinstance(n, ast.Constant) and n.value == text for n in ast.walk(ast.parse(source)))


def test_constants_are_exact_builtin_types() -> None:
    """JSON scalars decode to exact builtins; a subclass with its own ``__repr__`` is normalised on construction."""
    from torchgraft.ir.values import Const

    class Sneaky(str):
        def __repr__(self) -> str:
            return RUN

    class SneakyInt(int):
        def __repr__(self) -> str:
            return RUN

    assert type(Const(Sneaky("a")).value) is str and repr(Const(Sneaky("a")).value) == "'a'"
    assert type(Const(SneakyInt(3)).value) is int and repr(Const(SneakyInt(3)).value) == "3"


@pytest.mark.parametrize("field,value", [
    ("module", f'__main__"""\n{RUN}\n"""'),
    ("module", "os; import x"),
    ("qualname", f"Tiny(nn.Module):\n    pass\n{RUN}\nclass X"),
    ("qualname", "os; import x"),
])
def test_block_class_reference_with_code(doc: dict[str, Any], tmp_path: Path, field: str, value: str) -> None:
    """A Block's class is written by its name: a name that is not a dotted identifier is refused."""
    d = copy.deepcopy(doc)
    d["model"]["root"]["cls"][field] = value
    _refused(d, tmp_path, "<root>", field)


def _opaque(module: str, qualname: str, ctor: list[Any] | None) -> dict[str, Any]:
    return {"node": "Opaque", "cls": {"node": "ClassRef", "module": module, "qualname": qualname},
            "reason": "kept whole", "state": [], "ctor": ctor}


def _with_opaque_fc(doc: dict[str, Any], module: str, qualname: str, ctor: list[Any] | None) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    d["model"]["root"]["children"][0][1] = _opaque(module, qualname, ctor)
    return d


def _const(v: Any) -> dict[str, Any]:
    return {"node": "Const", "value": v}


@pytest.mark.parametrize("module,qualname,ctor", [
    ("os", "system", [["command", _const(f"touch {CANARY}")]]),
    ("builtins", "exec", [["source", _const(RUN)]]),
    ("subprocess", "call", [["args", _const(f"touch {CANARY}")], ["shell", _const(True)]]),
    ("torch.utils.cpp_extension", "load_inline", None),
    ("torch", "load", None),
    ("os; import x", "X", None),
    ("torch.nn", f"Linear({RUN})", None),
    ("torch.nn", "Linear", [[f"in_features={RUN}, x", _const(4)]]),
])
def test_opaque_class_reference_with_code(doc: dict[str, Any], tmp_path: Path, module: str, qualname: str,
                                          ctor: list[Any] | None) -> None:
    """An Opaque's class must be a dotted name of an ``nn.Module`` subclass, never a function or a
    standard-library name; its constructor keywords must be identifiers."""
    _refused(_with_opaque_fc(doc, module, qualname, ctor), tmp_path, "fc")


def test_opaque_torch_module_still_emits(doc: dict[str, Any], tmp_path: Path) -> None:
    """The check keeps real Opaque modules: ``torch.nn.Linear`` rebuilt from its constructor."""
    ctor = [["in_features", _const(4)], ["out_features", _const(3)]]
    source = _run(_with_opaque_fc(doc, "torch.nn.modules.linear", "Linear", ctor), tmp_path)
    assert "Linear(in_features=4, out_features=3)" in source


@pytest.mark.parametrize("name", [f"fc; {RUN}", "fc\nx", "1fc", "fc.x", ""])
def test_child_name_with_code_stays_data(doc: dict[str, Any], tmp_path: Path, name: str) -> None:
    """A child name is refused when not a plain state_dict name, or written as a string literal."""
    d = copy.deepcopy(doc)
    d["model"]["root"]["children"][0][0] = name
    _op(d, "fc")["target"]["path"] = name
    d["model"]["types"] = [t for t in d["model"]["types"] if t[0] == ""]
    try:
        source = _run(d, tmp_path)
    except (IRError, EmitError) as e:
        assert re.search(r"name|identifier|path|child", str(e)), e
    else:
        assert RUN not in source.replace(repr(name)[1:-1], "")


@pytest.mark.parametrize("name", [f"w; {RUN}", "class", "a b"])
def test_state_and_constant_names_with_code(doc: dict[str, Any], tmp_path: Path, name: str) -> None:
    d = copy.deepcopy(doc)
    d["model"]["root"]["state"] = [{"node": "StateSpec", "name": name, "shape": [3], "dtype": "float32",
                                    "parameter": True, "persistent": True, "requires_grad": True}]
    d["model"]["root"]["constants"] = [[name + "_c", _const(1)]]
    try:
        source = _run(d, tmp_path)
    except (IRError, EmitError) as e:
        assert re.search(r"name|identifier", str(e)), e
    else:
        assert RUN not in source.replace(repr(name)[1:-1], "").replace(repr(name + "_c")[1:-1], "")


@pytest.mark.parametrize("dtype", [f"float32; {RUN}", "float32)\nimport os\n("])
def test_state_dtype_with_code(doc: dict[str, Any], tmp_path: Path, dtype: str) -> None:
    d = copy.deepcopy(doc)
    d["model"]["root"]["state"] = [{"node": "StateSpec", "name": "w", "shape": [3], "dtype": dtype,
                                    "parameter": True, "persistent": True, "requires_grad": True}]
    _refused(d, tmp_path, "dtype")


@pytest.mark.parametrize("name", [f"f(): pass\n{RUN}\ndef g", "class", "a b"])
def test_helper_name_not_an_identifier(doc: dict[str, Any], tmp_path: Path, name: str) -> None:
    d = copy.deepcopy(doc)
    d["model"]["helpers"] = [{"node": "Helper", "name": name, "source": "def f():\n    return 1\n", "origin": "x"}]
    _refused(d, tmp_path, "helper")


def test_model_name_not_an_identifier(doc: dict[str, Any], tmp_path: Path) -> None:
    d = copy.deepcopy(doc)
    d["model"]["name"] = f"Tiny; {RUN}"
    _refused(d, tmp_path, "identifier")


def test_copied_source_is_code_and_documented_as_such() -> None:
    """Copied sources (``PySource``, ``Helper``, ``StateMethods``) ARE code and cannot be checked:
    ``from_json`` keeps them, and its docstring says that emitting such a file runs them."""
    assert from_json.__doc__ is not None and "copied source" in from_json.__doc__.lower()
