"""Faithful or loud: calls the example did not show either match the original or raise a clear error.

Each test captures on one call and then calls the emitted model differently (another batch
size or length, a padded mask, an argument the example left out, three calls in a row):
the emitted model must equal eager PyTorch (``assert_close``, rtol 1e-4 / atol 1e-5) or
raise ``ValueError`` naming the assumption, never run and differ.
"""

from __future__ import annotations

import ast
import copy

import pytest
import torch
from torch import nn
from zoo import import_torchvision

import torchgraft
from torchgraft import ir
from torchgraft.ir.verify import verify

import_torchvision()  # transformers imports torchvision when installed; it needs the CPU-only shim first
transformers = pytest.importorskip("transformers")

TOL = {"rtol": 1e-4, "atol": 1e-5}


def _emitted(model: nn.Module, *args: object, **kwargs: object) -> tuple[ir.Model, nn.Module]:
    captured = torchgraft.capture(model, args, kwargs)
    verify(captured)
    return captured, torchgraft.emit(captured).materialize().train(model.training)


def _masks(batch: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        mask[row, length - 1 - row % max(length - 1, 1):] = 0  # right padding, at least one token kept
    return mask


def _tiny(name: str) -> nn.Module:
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=37)
        return transformers.BertModel(cfg).eval()
    if name == "llama":
        cfg = transformers.LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return transformers.LlamaModel(cfg).eval()
    cfg = transformers.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64)
    return transformers.CLIPTextModel(cfg).eval()


def _main(out: object) -> torch.Tensor:
    return out["last_hidden_state"] if isinstance(out, dict) else out.last_hidden_state  # type: ignore[index,attr-defined]


@pytest.mark.parametrize("name", ["bert", "llama", "clip"])
def test_padded_masks_at_other_sizes_match(name: str) -> None:
    model = _tiny(name)
    ids = torch.randint(1, 99, (2, 7))
    ones, padded = torch.ones(2, 7, dtype=torch.long), _masks(2, 7)
    extra = {"use_cache": False} if name == "llama" else {}
    captured = torchgraft.capture(model, examples=[((ids,), {"attention_mask": ones, **extra}),
                                                   ((ids,), {"attention_mask": padded, **extra})])
    verify(captured)
    emitted = torchgraft.emit(captured).materialize().eval()
    for batch, length in ((1, 5), (3, 9), (4, 12)):
        ids2, mask2 = torch.randint(1, 99, (batch, length)), _masks(batch, length)
        with torch.no_grad():
            expected = _main(model(ids2, attention_mask=mask2, **extra))
            got = _main(emitted(ids2, attention_mask=mask2, **extra))
        torch.testing.assert_close(got, expected, **TOL)
    assert "device=torch.device(" not in torchgraft.emit(captured).source  # follows its inputs' device


def test_an_argument_the_example_left_out_is_refused_not_ignored() -> None:
    model = _tiny("bert")
    ids = torch.randint(1, 99, (2, 7))
    captured, emitted = _emitted(model, ids)
    assert any("attention_mask=None" in m for _, _, m in captured.report.guards)
    with torch.no_grad():
        torch.testing.assert_close(_main(emitted(ids)), _main(model(ids)), **TOL)
        with pytest.raises(TypeError, match="attention_mask"):  # not in the signature: no example passed it
            emitted(ids, attention_mask=_masks(2, 7))
        with pytest.raises(TypeError, match="token_type_ids"):
            emitted(ids, token_type_ids=torch.zeros_like(ids))


class _Half(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.shape[-1] > 32:
            x = x * 0.5
        return x


class _HalfSuper(_Half):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)  # a forward whose source cannot stand alone: the branch is guarded
        if x.shape[-1] > 32:
            x = x * 0.5
        return x


def test_a_size_branch_in_own_code_keeps_both_branches() -> None:
    model = nn.Sequential(_Half(), nn.ReLU()).eval()
    captured, emitted = _emitted(model, torch.randn(2, 3, 16, 16))
    assert captured.report.methods["0"] == "source"
    for shape in ((1, 3, 16, 16), (1, 3, 64, 64), (3, 3, 40, 48)):
        x = torch.randn(shape)
        torch.testing.assert_close(emitted(x), model(x), **TOL)


def test_a_size_branch_that_cannot_be_copied_is_guarded() -> None:
    model = _HalfSuper().eval()
    captured, emitted = _emitted(model, torch.randn(2, 3, 16, 16))
    assert {k for _, k, _ in captured.report.guards} == {"size"}  # its own branch and the inherited one
    x = torch.randn(3, 3, 20, 20)
    torch.testing.assert_close(emitted(x), model(x), **TOL)
    with pytest.raises(ValueError, match="size comparison"):
        emitted(torch.randn(1, 3, 64, 64))


class _Ema(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("mean", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        self.mean.mul_(0.9).add_(0.1 * y.mean(0))
        return y - self.mean


class _Counter(_Ema):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        self.mean.mul_(0.9).add_(0.1 * y.mean(0))
        self.n += 1
        return y - self.mean + self.n


@pytest.mark.parametrize("cls", [_Ema, _Counter])
def test_state_updated_in_forward_is_kept_and_the_model_untouched(cls: type[nn.Module]) -> None:
    model = cls()
    before = copy.deepcopy(model)
    captured = torchgraft.capture(model, (torch.randn(2, 4),))
    verify(captured)
    for (k, a), b in zip(model.state_dict().items(), before.state_dict().values()):
        assert torch.equal(a, b), k
    assert getattr(model, "n", 0) == getattr(before, "n", 0)
    emitted = torchgraft.emit(captured).materialize()
    x = torch.randn(3, 4)
    for _ in range(3):
        with torch.no_grad():
            torch.testing.assert_close(emitted(x), model(x), **TOL)


def test_unused_pure_statements_are_not_emitted() -> None:
    class Dead(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.arange(x.shape[0])
            x.view(-1)
            return x * 2

    source = torchgraft.emit(torchgraft.capture(Dead(), (torch.randn(2, 3),))).source
    forward = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "forward")
    statements = [n for n in forward.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert not statements, source


def test_examples_that_need_another_path_fail_loudly() -> None:
    model = _tiny("bert")
    ids = torch.randint(1, 99, (2, 7))
    with pytest.raises(torchgraft.CaptureError, match="(example 1|examples take different paths)"):
        torchgraft.capture(model, examples=[((ids,), {}), ((ids,), {"attention_mask": _masks(2, 7)})])


def test_examples_must_be_pairs() -> None:
    with pytest.raises(torchgraft.CaptureError, match=r"examples\[0\]"):
        torchgraft.capture(nn.Linear(2, 2), examples=[torch.randn(1, 2)])


def test_extra_keyword_arguments_are_refused_not_ignored() -> None:
    model = _tiny("bert")
    ids = torch.randint(1, 99, (2, 7))
    _, emitted = _emitted(model, ids, attention_mask=_masks(2, 7))
    with pytest.raises(TypeError, match="output_attentions"):  # the root takes no **kwargs: none was given
        emitted(ids, attention_mask=_masks(2, 7), output_attentions=True)
    inner = torchgraft.emit(torchgraft.capture(model, (ids,), {"attention_mask": _masks(2, 7)})).source
    assert inner.count("**kwargs") == inner.count("if len(kwargs) != ")  # a **kwargs an inner block keeps is guarded
    with pytest.raises(TypeError, match="output_attentions"):  # one its parents never fill is gone (trim_calls)
        emitted.encoder.layer[0](torch.randn(2, 7, 32), torch.ones(2, 1, 7, 7, dtype=torch.bool),
                                 output_attentions=True)


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.proj(x)
        return y if mask is None else y * mask.unsqueeze(-1)


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Masked()
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.inner(x, mask=mask))


def test_examples_that_take_different_paths_keep_both() -> None:
    model = _Outer().eval()
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5)
    mask[0, 3:] = 0
    captured = torchgraft.capture(model, examples=[((x,), {"mask": mask}), ((x,), {})])
    verify(captured)
    assert captured.report.methods["inner"] == "source" and captured.report.methods[""] == "source"
    emitted = torchgraft.emit(captured).materialize().eval()
    x2, mask2 = torch.randn(3, 4, 8), torch.ones(3, 4)
    mask2[1, 2:] = 0
    torch.testing.assert_close(emitted(x2, mask=mask2), model(x2, mask=mask2), **TOL)
    torch.testing.assert_close(emitted(x2), model(x2), **TOL)


def test_a_single_example_guards_the_path_it_took() -> None:
    model = _Outer().eval()
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5)
    captured, emitted = _emitted(model, x, mask=mask)
    assert captured.report.methods["inner"] == "fx"
    torch.testing.assert_close(emitted(x, mask=mask), model(x, mask=mask), **TOL)
    with pytest.raises(ValueError, match="captured with mask given"):
        emitted(x)


def _lm(name: str) -> nn.Module:
    if name == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4,
                                                                    n_positions=64))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64))


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_check_probes_pass_on_emitted_transformers(name: str) -> None:
    """Other batch sizes, another length, right/left padded masks, three calls; eval and train mode."""
    model = (_tiny(name) if name == "bert" else _lm(name)).eval()
    ids, mask = torch.randint(1, 99, (2, 7)), _masks(2, 7)
    kwargs = {"attention_mask": mask} | ({} if name == "bert" else {"use_cache": False})
    emitted = torchgraft.emit(torchgraft.capture(model, (ids,), kwargs)).materialize()
    report = torchgraft.check(model, emitted, (ids,), kwargs)
    assert report.ok, str(report)
    statuses = {p.name: p.status for p in report.probes}
    assert {"batch=1", "batch=3", "length=10", "padding=right", "padding=left", "repeat=3"} <= set(statuses)
    assert all(s == "ok" for s in statuses.values()), str(report)
