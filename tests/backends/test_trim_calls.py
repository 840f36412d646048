"""Calls say only what matters: children take only the arguments they use, the root keeps its guards.

``backends/torch/trim_calls.py`` drops a non-root forward's parameters that only argument guards
read (or nothing), with the arguments every parent passed for them, and arguments equal to the
callee's default. Checked on a hand-written model, hand-built IR (what must be kept) and tiny
BERT and Llama: the emitted model, reloaded in a process where torchgraft cannot be imported,
equals eager (``assert_close``, rtol 1e-5, atol 1e-5 x max|output|) at the example and at
another batch size and length, and the original state_dict loads strict=True.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from zoo import assert_names_defined, import_torchvision

import torchgraft
from torchgraft import ir
from torchgraft.backends.torch.trim_calls import trim_calls
from torchgraft.ir.values import Const, Ref
from torchgraft.retype import retype

_CHILD = r"""
import importlib.util, json, sys
sys.modules["torchgraft"] = None
import torch
from safetensors.torch import load_file, save_file
folder, cases = sys.argv[1], json.loads(sys.argv[2])
spec = importlib.util.spec_from_file_location("emitted_model", folder + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = mod.load().eval()
mod.build().load_state_dict(load_file(folder + "/original.safetensors"), strict=True)
inputs, outs = load_file(folder + "/inputs.safetensors"), {}
with torch.no_grad():
    for case, names in cases.items():
        out = model(**{n: inputs[f"{case}.{n}"] for n in names})
        items = out.items() if isinstance(out, dict) else [("out", out)]
        outs.update({f"{case}.{k}": v for k, v in items if isinstance(v, torch.Tensor)})
save_file(outs, folder + "/outputs.safetensors")
"""


def _flat(out: Any, case: str) -> dict[str, torch.Tensor]:  # noqa: ANN401
    items = out.items() if isinstance(out, dict) else [("out", out)]
    return {f"{case}.{k}": v for k, v in items if isinstance(v, torch.Tensor)}


def _round_trip(model: nn.Module, cases: dict[str, dict[str, torch.Tensor]], folder: Path) -> str:
    """Capture on the first case, emit, run every case in a fresh process; assert it equals eager.
    Returns the emitted source."""
    from safetensors.torch import load_file, save_file

    code = torchgraft.emit(torchgraft.capture(model, (), next(iter(cases.values()))))
    code.save(folder)
    assert_names_defined(folder / "model.py")
    save_file({f"{c}.{n}": t.contiguous() for c, kw in cases.items() for n, t in kw.items()},
              str(folder / "inputs.safetensors"))
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(folder / "original.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    names = json.dumps({c: list(kw) for c, kw in cases.items()})
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), names], capture_output=True, text=True,
                          env=env, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = load_file(str(folder / "outputs.safetensors"))
    with torch.no_grad():
        refs = {k: v for c, kw in cases.items() for k, v in _flat(model(**kw), c).items()}
    assert set(outs) == set(refs)
    for key, ref in refs.items():
        torch.testing.assert_close(outs[key], ref, atol=1e-5 * max(ref.abs().max().item(), 1.0), rtol=1e-5, msg=key)
    assert list(code.materialize(load_weights=False, device="meta").state_dict()) == list(model.state_dict())
    return code.source


def _signature(source: str, cls: str) -> str:
    """The ``def forward(...)`` of class ``cls`` in emitted source, on one line."""
    body = source[source.index(f"class {cls}("):]
    match = re.search(r"def forward\((.*?)\)( -> [^:]+)?:", body, re.S)
    assert match is not None
    return " ".join(match.group(1).split())


# --- a hand-written model --------------------------------------------------------------------


class _Child(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0,
                cache: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # noqa: ANN401
        if mask is not None:
            x = x * mask
        if cache is not None:
            x = x + cache
        return self.lin(x) * scale


class _Root(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _Child()
        self.b = _Child()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.a(x, mask, 1.0, cache=None, flag=True)
        return self.b(h, None, scale=2.0)


def test_children_lose_unused_arguments_and_still_match(tmp_path: Path) -> None:
    model = _Root().eval()
    cases = {"example": {"x": torch.randn(2, 4), "mask": torch.rand(2, 4)},
             "other": {"x": torch.randn(5, 4), "mask": torch.rand(5, 4)}}
    source = _round_trip(model, cases, tmp_path)
    children = [c for c in re.findall(r"^class (\w+)\(", source, re.M) if c.startswith("_Child")]
    assert children, source
    for cls in children:
        sig = _signature(source, cls)
        assert "cache" not in sig and "kwargs" not in sig, sig
    assert "cache=None" not in source and "flag=" not in source
    assert "self.b(self.a(x, mask), scale=2.0)" in source  # no None for mask, no scale=1.0 (the default)
    assert _signature(source, "_Root").startswith("self, x: Tensor, mask")
    emitted = torchgraft.emit(torchgraft.capture(model, (), cases["example"])).materialize()
    with pytest.raises(ValueError, match="captured with mask given"):  # the root keeps its guards
        emitted(torch.randn(2, 4))


class _Branchy(_Root):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: the root is copied as source, which calls its children itself
            x = x * 0.5
        h = self.a(x, mask, 1.0, cache=None, flag=True)
        return self.b(h, None, scale=2.0)


def test_a_root_of_copied_source_keeps_its_children_whole() -> None:
    model = _Branchy().eval()
    captured = torchgraft.capture(model, (torch.randn(2, 4),))
    assert captured.report.methods[""] == "source"
    source = torchgraft.emit(captured).source
    assert "cache=None" in _signature(source, "_Child")


# --- hand-built IR: what must stay ---------------------------------------------------------------

_T = ir.TensorType(("N", 4))


def _guard(name: str, compare: str, value: object, kind: str = "argument") -> tuple[ir.Op, ir.Op]:
    cond = ir.Op(f"{name}_ok", ir.FunctionCall(f"operator.{compare}"), (Ref(name), Const(value)))
    return cond, ir.Op(f"{name}_guard", ir.Guard(f"captured with {name} {compare} {value!r}", kind), (Ref(cond.name),))


def _model(child_inputs: tuple[ir.Input, ...], child_ops: tuple[ir.Op, ...], call: ir.Op,
           root_inputs: tuple[ir.Input, ...] = (ir.Input("x", _T),), root_ops: tuple[ir.Op, ...] = ()) -> ir.Model:
    fed = "lin_in" if any(op.name == "lin_in" for op in child_ops) else "x"  # what the child computes first
    lin = ir.Op("lin", ir.ChildCall("lin"), (Ref(fed),))
    child = ir.Block(ir.ClassRef("m", "Child"), (("lin", ir.LinearLayer(4, 4)),),
                     ir.Graph(child_inputs, (*child_ops, lin), Ref("lin")))
    root = ir.Block(ir.ClassRef("m", "Root"), (("child", child),),
                    ir.Graph(root_inputs, (*root_ops, call), Ref(call.name)))
    return ir.Model("Root", root, root_inputs)


def _child_graph(model: ir.Model) -> ir.Graph:
    child = dict(ir.walk(model.root))["child"]
    assert isinstance(child, ir.Block) and isinstance(child.body, ir.Graph)
    return child.body


def _call(model: ir.Model) -> ir.Op:
    assert isinstance(model.root, ir.Block) and isinstance(model.root.body, ir.Graph)
    return model.root.body.ops[-1]


def test_guarded_constants_and_kwargs_go_the_root_guard_stays() -> None:
    count = ir.Op("kwargs_len", ir.FunctionCall("builtins.len"), (Ref("kwargs"),))
    kw_ok = ir.Op("kwargs_ok", ir.FunctionCall("operator.eq"), (Ref("kwargs_len"), Const(1)))
    kw_guard = ir.Op("kwargs_guard", ir.Guard("captured with 1 keyword in **kwargs"), (Ref("kwargs_ok"),))
    inputs = (ir.Input("x", _T), ir.Input("cache", default=Const(None)),
              ir.Input("kwargs", kind=ir.InputKind.VAR_KEYWORD))
    root_inputs = (ir.Input("x", _T), ir.Input("cache", kind=ir.InputKind.KEYWORD, default=Const(None)))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Const(None)), (("flag", Const(True)),))
    model = _model(inputs, (*_guard("cache", "is_", None), count, kw_ok, kw_guard), call, root_inputs,
                   _guard("cache", "is_", None))
    trimmed = trim_calls(model)
    assert [i.name for i in _child_graph(trimmed).inputs] == ["x"]
    assert [op.name for op in _child_graph(trimmed).ops] == ["lin"]
    assert _call(trimmed).args == (Ref("x"),) and _call(trimmed).kwargs == ()
    assert [i.name for i in _child_graph(model).inputs] == ["x", "cache", "kwargs"]  # the input is unchanged
    assert isinstance(trimmed.root, ir.Block) and isinstance(trimmed.root.body, ir.Graph)
    assert trimmed.inputs == model.inputs and len(trimmed.root.body.ops) == 3  # root guard and the call
    emitted = torchgraft.emit(trimmed).materialize(load_weights=False)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(emitted(x), emitted.child.lin(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="captured with cache"):
        emitted(x, cache=torch.ones(3, 4))


def test_a_value_that_may_break_the_guard_is_kept() -> None:
    """The root forwards its own ``cache``: it could be anything, so the child's guard must stay."""
    inputs = (ir.Input("x", _T), ir.Input("cache", default=Const(None)))
    root_inputs = (ir.Input("x", _T), ir.Input("cache", default=Const(None)))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Ref("cache")))
    model = _model(inputs, _guard("cache", "is_", None), call, root_inputs)
    assert trim_calls(model) == model


def test_a_tensor_a_method_made_satisfies_a_given_guard() -> None:
    """``mask = x.abs()`` is never None: the child's ``mask is not None`` guard cannot fire, so it goes."""
    inputs = (ir.Input("x", _T), ir.Input("mask", _T, default=Const(None)))
    made = ir.Op("mask", ir.MethodCall("abs"), (Ref("x"),), type=_T)
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Ref("mask")))
    trimmed = trim_calls(_model(inputs, _guard("mask", "is_not", None), call, root_ops=(made,)))
    assert [i.name for i in _child_graph(trimmed).inputs] == ["x"]
    assert _call(trimmed).args == (Ref("x"),)


def _used_mask_child(guards: tuple[ir.Op, ...]) -> tuple[tuple[ir.Input, ...], tuple[ir.Op, ...]]:
    """A child that multiplies by ``mask`` (so keeps the parameter) after ``guards`` on it."""
    inputs = (ir.Input("x", _T), ir.Input("mask", _T, default=Const(None)))
    return inputs, (*guards, ir.Op("lin_in", ir.FunctionCall("operator.mul"), (Ref("x"), Ref("mask"))))


def test_a_guard_the_parent_already_made_goes_from_the_child() -> None:
    """The root checks ``mask is not None`` and passes its ``mask`` on: the child's same guard cannot fire.
    The parameter stays (the child multiplies by it); the root's guard stays (the root is what users call)."""
    inputs, ops = _used_mask_child(_guard("mask", "is_not", None))
    root_inputs = (ir.Input("x", _T), ir.Input("mask", _T, default=Const(None)))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Ref("mask")))
    trimmed = trim_calls(_model(inputs, ops, call, root_inputs, _guard("mask", "is_not", None)))
    assert [i.name for i in _child_graph(trimmed).inputs] == ["x", "mask"]
    assert [op.name for op in _child_graph(trimmed).ops] == ["lin_in", "lin"]
    assert isinstance(trimmed.root, ir.Block) and isinstance(trimmed.root.body, ir.Graph)
    assert [op.name for op in trimmed.root.body.ops] == ["mask_ok", "mask_guard", "child"]
    ir.verify(trimmed)
    emitted = torchgraft.emit(trimmed).materialize(load_weights=False)
    x, mask = torch.randn(3, 4), torch.rand(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(emitted(x, mask), emitted.child.lin(x * mask), rtol=0, atol=0)
    with pytest.raises(ValueError, match="captured with mask is_not None"):  # still loud, from the root
        emitted(x)


def test_a_counted_tuple_pins_a_count_guard() -> None:
    """``child(x, (a, b))`` passes two items: the child's ``len(pair) == 2`` guard goes; ``len == 3`` stays."""
    for count, kept in ((2, False), (3, True)):
        inputs = (ir.Input("x", _T), ir.Input("pair"))
        size = ir.Op("pair_len", ir.FunctionCall("builtins.len"), (Ref("pair"),))
        ok = ir.Op("pair_ok", ir.FunctionCall("operator.eq"), (Ref("pair_len"), Const(count)))
        guard = ir.Op("pair_guard", ir.Guard("captured with 2 items in pair"), (Ref("pair_ok"),))
        first = ir.Op("lin_in", ir.FunctionCall("operator.getitem"), (Ref("pair"), Const(0)))
        call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), ir.Seq((Ref("x"), Ref("x")))))
        trimmed = trim_calls(_model(inputs, (size, ok, guard, first), call))
        names = [op.name for op in _child_graph(trimmed).ops]
        assert ("pair_guard" in names) is kept, names


def test_a_parent_parameter_nobody_checks_keeps_the_child_guard() -> None:
    """The root passes its own optional ``mask`` unchecked: it may be None, so the child keeps its guard."""
    inputs, ops = _used_mask_child(_guard("mask", "is_not", None))
    root_inputs = (ir.Input("x", _T), ir.Input("mask", _T, default=Const(None)))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Ref("mask")))
    model = _model(inputs, ops, call, root_inputs)
    assert trim_calls(model) == model


@pytest.mark.parametrize("kind", ["size", "dtype"])
def test_size_and_dtype_guards_stay(kind: str) -> None:
    if kind == "size":
        inputs = (ir.Input("x", _T), ir.Input("n", ir.ScalarType("int"), default=Const(0)))
        ops: tuple[ir.Op, ...] = _guard("n", "eq", 4, kind="size")
    else:
        inputs = (ir.Input("x", _T), ir.Input("y", _T, default=Const(None)))
        dtype = ir.Op("y_dtype", ir.FunctionCall("builtins.getattr"), (Ref("y"), Const("dtype")))
        ok = ir.Op("dtype_ok", ir.FunctionCall("operator.eq"), (Ref("y_dtype"), Const(torch.float32)))
        ops = (dtype, ok, ir.Op("dtype_guard", ir.Guard("captured with a float32 tensor"), (Ref("dtype_ok"),)))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Const(4) if kind == "size" else Ref("x")))
    model = _model(inputs, ops, call)
    assert trim_calls(model) == model


def test_a_positional_argument_before_a_used_one_goes_and_the_rest_pass_by_keyword() -> None:
    """``child(x, None, x)`` -> ``child(x, y=x)``: GPT-2's ``block(hidden, None, mask)``."""
    inputs = (ir.Input("x", _T), ir.Input("cache", default=Const(None)), ir.Input("y", _T))
    add = ir.Op("lin_in", ir.FunctionCall("operator.add"), (Ref("x"), Ref("y")))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Const(None), Ref("x")))
    trimmed = trim_calls(_model(inputs, (*_guard("cache", "is_", None), add), call))
    assert [i.name for i in _child_graph(trimmed).inputs] == ["x", "y"]
    assert _call(trimmed).args == (Ref("x"),) and _call(trimmed).kwargs == (("y", Ref("x")),)


def test_a_child_read_as_an_attribute_keeps_its_signature() -> None:
    """``self.child`` read as a value could be called anywhere (a helper): its parameters stay."""
    inputs = (ir.Input("x", _T), ir.Input("cache", default=Const(None)))
    read = ir.Op("module", ir.GetAttr("child"))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Const(None)))
    trimmed = trim_calls(_model(inputs, _guard("cache", "is_", None), call, root_ops=(read,)))
    assert [i.name for i in _child_graph(trimmed).inputs] == ["x", "cache"]
    assert _call(trimmed).args == (Ref("x"),)  # None is cache's default: left out all the same


def test_arguments_equal_to_the_default_are_left_out() -> None:
    inputs = (ir.Input("x", _T), ir.Input("scale", ir.ScalarType("float"), default=Const(1.0)),
              ir.Input("shift", ir.ScalarType("float"), default=Const(0.0)))
    scaled = ir.Op("scaled", ir.FunctionCall("operator.mul"), (Ref("x"), Ref("scale")))
    shifted = ir.Op("shifted", ir.FunctionCall("operator.add"), (Ref("scaled"), Ref("shift")))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Const(2.0), Const(0.0)), ())
    kw_call = ir.Op("child", ir.ChildCall("child"), (Ref("x"),), (("scale", Const(1.0)), ("shift", Const(0))))
    assert _call(trim_calls(_model(inputs, (scaled, shifted), call))).args == (Ref("x"), Const(2.0))
    assert _call(trim_calls(_model(inputs, (scaled, shifted), kw_call))).kwargs == (("shift", Const(0)),)  # 0 != 0.0


def test_retype_replays_the_trimmed_calls() -> None:
    """``retype`` runs the IR over the emitted modules: a child called directly gets the trimmed call."""
    inputs = (ir.Input("x", _T), ir.Input("cache", default=Const(None)))
    call = ir.Op("child", ir.ChildCall("child"), (Ref("x"), Const(None)))
    model = _model(inputs, _guard("cache", "is_", None), call)
    assert isinstance(model.root, ir.Block)
    model = model.with_root(replace(model.root, method="fx"))  # the root interpreted, the "hand" child called
    typed = retype(model)
    assert _call(typed).type == ir.TensorType(("N", 4), "float32", "cpu")
    assert [i.name for i in _child_graph(typed).inputs] == ["x", "cache"]  # retype itself trims nothing


# --- transformers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers() -> Any:  # noqa: ANN401
    import_torchvision()  # transformers imports torchvision when installed; it needs the CPU-only shim first
    return pytest.importorskip("transformers")


def _ids() -> dict[str, dict[str, torch.Tensor]]:
    return {"a": {"input_ids": torch.randint(1, 100, (2, 10))}, "b": {"input_ids": torch.randint(1, 100, (3, 7))}}


def _no_noise(source: str) -> None:
    for call in re.findall(r"self\.\w+(?:\[\d+\])?\((?:[^()]|\([^()]*\))*\)|\blayer\((?:[^()]|\([^()]*\))*\)", source):
        assert "cache=None" not in call and "position_ids=None" not in call, call


def test_bert_children_take_only_what_they_use(transformers: Any, tmp_path: Path) -> None:  # noqa: ANN401
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    source = _round_trip(transformers.BertModel(cfg).eval(), _ids(), tmp_path)
    _no_noise(source)
    assert "**kwargs" not in source and "encoder_hidden_states" not in source
    assert _signature(source, "BertLayer") == "self, hidden_states: Tensor, attention_mask: Tensor"


def test_llama_children_take_only_what_they_use(transformers: Any, tmp_path: Path) -> None:  # noqa: ANN401
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.config.use_cache = False  # as use_cache=False in the call: the round trip passes tensors only
    source = _round_trip(model, _ids(), tmp_path)
    _no_noise(source)
    assert "position_ids" not in _signature(source, "LlamaDecoderLayer")
    assert "kwargs" not in _signature(source, "LlamaAttention")
    emitted = torchgraft.emit(torchgraft.capture(model, (), _ids()["a"])).materialize()
    with pytest.raises(ValueError, match="logits_to_keep"):  # the root still refuses what it cannot reproduce
        emitted(input_ids=_ids()["a"]["input_ids"], logits_to_keep=1)


class _StarChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None, *rest: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        for r in rest:
            out = out + r
        return out


class _StarRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = _StarChild()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(x, None, x * 2)  # x * 2 lands in *rest: it has no keyword to move to


def test_a_dropped_parameter_before_star_args_keeps_the_call() -> None:
    model, x = _StarRoot().eval(), torch.randn(2, 4)
    rebuilt = torchgraft.emit(torchgraft.capture(model, (x,))).materialize().eval()
    with torch.no_grad():
        for b in (2, 5):
            x = torch.randn(b, 4)
            torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
