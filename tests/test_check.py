"""torchgraft.check: eval/train equivalence, output structures, first diverging module."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

import torchgraft
from torchgraft.check import CheckReport, check, flatten, tensor_diff


class Block(nn.Module):
    """conv -> bn -> relu with dropout in train mode."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.bn(self.conv(x))))


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 1), *[Block(8) for _ in range(3)], nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 4, 4)


class DictOut(nn.Module):
    """Returns a dict holding a tensor, a tuple of tensors, and a non-tensor leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> dict[str, Any]:
        return {"logits": self.a(x) * scale, "pair": (self.b(x), x.sum()), "n": 7}


def test_identical_copies_pass_in_both_modes_and_originals_untouched() -> None:
    net = _net()
    twin = copy.deepcopy(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = check(net, twin, (_x(),))
    assert report.ok, str(report)
    assert {r.mode for r in report.results} == {"eval", "train"}
    assert report.first_divergence == {"eval": None, "train": None}
    assert net.training and twin.training  # modes of the originals unchanged
    for key, value in net.state_dict().items():  # BN running stats, num_batches_tracked
        assert torch.equal(value, before[key]), key
    report.raise_if_failed()


def test_train_mode_dropout_matters() -> None:
    """Same weights, different dropout rate: eval matches, train does not."""
    net = _net()
    other = copy.deepcopy(net)
    other[2].drop.p = 0.1
    report = check(net, other, (_x(),))
    assert all(r.ok for r in report.results if r.mode == "eval")
    assert not all(r.ok for r in report.results if r.mode == "train")
    assert report.first_divergence["train"] == "2.drop"


def test_caller_rng_state_preserved() -> None:
    net, twin, x = _net(), _net(), _x()
    state = torch.get_rng_state()
    check(net, twin, (x,), seed=123)
    assert torch.equal(torch.get_rng_state(), state)


def test_perturbed_deep_layer_is_first_divergence() -> None:
    net = _net()
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad[2].conv.weight.add_(0.1)
    report = check(net, bad, (_x(),))
    assert not report.ok
    assert report.first_divergence == {"eval": "2.conv", "train": "2.conv"}
    text = str(report)
    assert "FAILED" in text and "first divergence (eval): 2.conv" in text
    with pytest.raises(AssertionError, match="2.conv"):
        report.raise_if_failed()


def test_inplace_relu_does_not_hide_divergence() -> None:
    """The bn output is overwritten by an in-place ReLU; the recorded copy must not be."""
    ref = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    cand = copy.deepcopy(ref)
    with torch.no_grad():
        cand[0].bias.add_(1.0)
    report = check(ref, cand, (torch.randn(3, 4),), modes=("eval",))
    assert report.first_divergence == {"eval": "0"}


def test_tolerance_options() -> None:
    ref = nn.Linear(4, 3)
    cand = copy.deepcopy(ref)
    with torch.no_grad():
        cand.bias.add_(1e-3)
    x = (torch.randn(2, 4),)
    assert not check(ref, cand, x).ok
    assert check(ref, cand, x, atol=1e-2).ok
    assert check(ref, cand, x, rtol=1.0).ok


def test_dict_and_tuple_outputs_with_kwargs() -> None:
    ref = DictOut()
    report = check(ref, copy.deepcopy(ref), (torch.randn(2, 4),), {"scale": 2.0}, modes=("eval",))
    assert report.ok, str(report)
    assert [r.path for r in report.results] == ["out['logits']", "out['pair'][0]", "out['pair'][1]", "out['n']"]
    assert report.results[0].ref_shape == (2, 3) and report.results[2].ref_shape == ()
    bad = copy.deepcopy(ref)
    with torch.no_grad():
        bad.b.weight.mul_(2)
    report = check(ref, bad, (torch.randn(2, 4),), {"scale": 2.0}, modes=("eval",))
    failed = [r.path for r in report.results if not r.ok]
    assert failed == ["out['pair'][0]"]
    assert report.first_divergence["eval"] == "b"


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, x * 2


class Single(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Wide(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, torch.cat([x, x]) * 2


def test_structure_mismatch_reported_clearly() -> None:
    x = (torch.randn(2, 3),)
    report = check(Pair(), Single(), x, modes=("eval",))
    assert not report.ok
    notes = {r.path: r.note for r in report.results}
    assert notes == {"out[0]": "missing in candidate", "out[1]": "missing in candidate", "out": "only in candidate"}
    assert "missing in candidate" in str(report)
    shapes = check(Pair(), Wide(), x, modes=("eval",))
    (bad,) = shapes.failures()
    assert (bad.path, bad.ref_shape, bad.cand_shape, bad.note) == ("out[1]", (2, 3), (4, 3), "shapes differ")
    assert math.isnan(bad.max_abs)
    assert "[2, 3]" in str(shapes) and "[4, 3]" in str(shapes)


def test_flatten_ordered_dict_and_dataclass() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Out:
        loss: torch.Tensor
        extra: list[torch.Tensor]

    class ModelOutput(OrderedDict):
        """Like transformers' ModelOutput: an OrderedDict subclass, read as a mapping."""

    t = torch.zeros(1)
    assert [p for p, _ in flatten(OrderedDict(a=t, b=[t, None]))] == ["out['a']", "out['b'][0]", "out['b'][1]"]
    assert [p for p, _ in flatten(Out(t, [t]))] == ["out.loss", "out.extra[0]"]
    assert [p for p, _ in flatten(ModelOutput(logits=t, hidden=(t,)))] == ["out['logits']", "out['hidden'][0]"]


def test_tensor_diff_nan_and_inf() -> None:
    nan, inf = float("nan"), float("inf")
    assert tensor_diff(torch.tensor([nan, inf, 1.0]), torch.tensor([nan, inf, 1.0])) == (0.0, 1.0)
    assert tensor_diff(torch.tensor([nan, 2.0]), torch.tensor([1.0, 2.0]))[0] == inf
    assert tensor_diff(torch.tensor([1, 5]), torch.tensor([1, 2])) == (3.0, 5.0)


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        check(nn.Identity(), nn.Identity(), (torch.zeros(1),), modes=("evaluation",))


def test_report_type() -> None:
    report = check(nn.Identity(), nn.Identity(), (torch.zeros(1),))
    assert isinstance(report, CheckReport) and report.ok
    assert str(report).startswith("check: ok")


def test_resnet18_roundtrip_matches(torchvision) -> None:  # noqa: ANN001
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rebuilt = torchgraft.emit(torchgraft.capture(model, (x,))).materialize()
    report = check(model, rebuilt, (x,))
    report.raise_if_failed()
    assert {r.mode for r in report.results} == {"eval", "train"}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_resnet18_perturbed_layer_named(torchvision) -> None:  # noqa: ANN001
    model = torchvision.models.resnet18(num_classes=10).eval()
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.layer2[1].conv1.weight.mul_(1.01)
    report = check(model, bad, (torch.randn(1, 3, 32, 32),), modes=("eval",))
    assert report.first_divergence == {"eval": "layer2.1.conv1"}


# ---------------------------------------------------------------------------- probes beyond the example


class Head(nn.Module):
    """A linear layer; ``wrong_at`` adds 1 to its output when a condition on the input holds."""

    def __init__(self, wrong_at: Any = None) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.wrong_at = wrong_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out + 1 if self.wrong_at is not None and self.wrong_at(x) else out


class Wrapper(nn.Module):
    """``Head`` behind a second layer, so the first divergence has a name to find."""

    def __init__(self, wrong_at: Any = None) -> None:
        super().__init__()
        self.head = Head(wrong_at)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(x))


def _twin(ref: nn.Module, cand: nn.Module) -> nn.Module:
    cand.load_state_dict(ref.state_dict())
    return cand


def _statuses(report: CheckReport, mode: str = "eval") -> dict[str, str]:
    return {p.name: p.status for p in report.probes if p.mode == mode}


def test_wrong_only_at_batch_1_fails_default_passes_example_only() -> None:
    ref = Wrapper()
    cand = _twin(ref, Wrapper(lambda x: x.shape[0] == 1))
    x = (torch.randn(2, 4),)
    report = check(ref, cand, x)
    assert not report.ok and all(r.ok for r in report.results)
    assert _statuses(report) == {"example": "ok", "batch=1": "MISMATCH", "batch=3": "ok", "length": "skipped",
                                 "padding": "skipped", "repeat=3": "ok"}
    (bad, _) = report.probe_failures()  # eval and train
    assert bad.first_divergence == "head" and bad.results[0].ref_shape == (1, 2)
    text = str(report)
    assert text.startswith("check: FAILED (probe(s) MISMATCH: batch=1 (eval), batch=1 (train))")
    assert "batch=1   " in text and "first divergence: head" in text
    assert check(ref, cand, x, probes=("example",)).ok
    assert check(ref, cand, x, probes=False).ok
    assert check(ref, cand, x, probes="example,repeat").ok


class Tokens(nn.Module):
    """Embeds token ids and mean-pools them over the positions the mask keeps."""

    def __init__(self, length_bug: int | None = None, ignore_mask: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 3)
        self.length_bug, self.ignore_mask = length_bug, ignore_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj(self.emb(input_ids))
        if self.length_bug is not None and input_ids.shape[1] != self.length_bug:
            h = h * 1.01
        if attention_mask is None or self.ignore_mask:
            return h.mean(1)
        m = attention_mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1)


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 20, (2, 6)), torch.ones(2, 6, dtype=torch.long)


def test_wrong_only_at_another_length() -> None:
    ref, (ids, mask) = Tokens(), _tokens()
    cand = _twin(ref, Tokens(length_bug=6))
    report = check(ref, cand, (ids,), {"attention_mask": mask}, modes=("eval",))
    assert _statuses(report) == {"example": "ok", "batch=1": "ok", "batch=3": "ok", "length=9": "MISMATCH",
                                 "padding=right": "ok", "padding=left": "ok", "repeat=3": "ok"}
    assert report.probe_failures()[0].first_divergence == ""  # the root module itself scales its output
    assert check(ref, cand, (ids,), {"attention_mask": mask}, probes=("example",)).ok
    assert check(ref, cand, (ids,), {"attention_mask": mask}, length_delta=0).ok


def test_wrong_only_with_a_padded_mask() -> None:
    ref, (ids, mask) = Tokens(), _tokens()
    cand = _twin(ref, Tokens(ignore_mask=True))
    report = check(ref, cand, (ids, mask), modes=("eval",))
    assert {k for k, v in _statuses(report).items() if v != "ok"} == {"padding=right", "padding=left"}
    assert check(ref, cand, (ids, mask), probes=("example", "batch", "length", "repeat")).ok


class Ema(nn.Module):
    """Adds a running mean of its inputs; ``update=False`` forgets to update it."""

    def __init__(self, update: bool = True) -> None:
        super().__init__()
        self.register_buffer("avg", torch.zeros(4))
        self.update = update
        self.calls = 0  # a plain attribute: check must not change it on the caller's model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = x + self.avg
        if self.update:
            self.avg.mul_(0.5).add_(0.5 * x.mean(0))
        return out


class Stateful(nn.Module):
    def __init__(self, update: bool = True) -> None:
        super().__init__()
        self.ema = Ema(update)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ema(x))


def test_wrong_only_from_the_second_call() -> None:
    ref = Stateful()
    cand = _twin(ref, Stateful(update=False))
    x = (torch.randn(3, 4),)
    report = check(ref, cand, x)
    assert {p.name for p in report.probe_failures()} == {"repeat=3"}
    failed = report.probe_failures()[0]
    assert [r.path for r in failed.results if not r.ok] == ["call2:out", "call3:out", "state['ema.avg']"]
    assert failed.first_divergence == "ema"
    assert check(ref, cand, x, probes=("example", "batch")).ok
    assert check(ref, copy.deepcopy(ref), x).ok  # the same state updates in both: every probe passes


def test_callers_models_left_unchanged() -> None:
    ref, cand = Stateful(), Stateful()
    ref.train()
    cand.eval()
    before = [copy.deepcopy(m.state_dict()) for m in (ref, cand)]
    check(ref, cand, (torch.randn(3, 4),))
    for m, state in zip((ref, cand), before):
        assert m.ema.calls == 0
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert ref.training and not cand.training


class RefusesBatch1(Wrapper):
    """A candidate with a run-time guard: it refuses batch 1 with ``ValueError``."""

    def __init__(self, error: type[Exception] = ValueError) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            raise self.error("the capture saw batch 2 only; capture with examples=[...] to allow batch 1")
        return super().forward(x)


def test_refused_probe_listed_without_failing() -> None:
    ref = Wrapper()
    report = check(ref, _twin(ref, RefusesBatch1()), (torch.randn(2, 4),))
    assert report.ok
    assert _statuses(report)["batch=1"] == "refused"
    refused = next(p for p in report.probes if p.status == "refused")
    assert refused.reason.startswith("candidate raised ValueError: the capture saw batch 2 only")
    assert str(report).startswith("check: ok (probes: 2 refused, 4 skipped)")
    crashing = check(ref, _twin(ref, RefusesBatch1(RuntimeError)), (torch.randn(2, 4),))
    assert not crashing.ok and _statuses(crashing)["batch=1"] == "MISMATCH"
    assert "candidate raised RuntimeError" in str(crashing)


def test_reference_that_cannot_run_a_probe_skips_it() -> None:
    ref = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))  # one value per channel at batch 1 in train mode
    report = check(ref, copy.deepcopy(ref), (torch.randn(2, 4),))
    assert report.ok
    assert _statuses(report, "eval")["batch=1"] == "ok"
    skipped = next(p for p in report.probes if p.mode == "train" and p.name == "batch=1")
    assert skipped.status == "skipped" and skipped.reason.startswith("reference raised ValueError: Expected more")


def test_unknown_probe_rejected() -> None:
    with pytest.raises(ValueError, match="unknown probe"):
        check(nn.Identity(), nn.Identity(), (torch.zeros(1),), probes=("batches",))


def test_spatial_probe_only_when_asked() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    x = (torch.randn(2, 3, 8, 8),)
    assert "length" in _statuses(check(net, copy.deepcopy(net), x, modes=("eval",)))
    report = check(net, copy.deepcopy(net), x, modes=("eval",), spatial=True)
    (probe,) = [p for p in report.probes if p.name == "spatial+3"]
    assert probe.status == "ok" and probe.results[0].ref_shape == (2, 4, 1, 1)


def test_made_inputs_keep_kinds_and_ranges() -> None:
    from torchgraft.probe_inputs import make_probes
    from torchgraft.probes import PROBE_KINDS

    class Model(nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                    position_ids: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
            return input_ids

    ids = torch.randint(5, 50, (3, 6))
    inputs = (ids, torch.ones(3, 6, dtype=torch.long), torch.zeros(3, 6, dtype=torch.long),
              torch.arange(6)[None], torch.zeros(3, 6, dtype=torch.bool))
    probes = {p.name: p for p in make_probes(Model(), inputs, {}, PROBE_KINDS, seed=1)}
    assert list(probes) == ["batch=1", "batch=4", "length=9", "padding=right", "padding=left", "repeat=3"]
    new_ids, mask, types, pos, kpm = probes["length=9"].args
    assert new_ids.shape == mask.shape == types.shape == kpm.shape == (3, 9) and new_ids.dtype == torch.long
    assert 5 <= int(new_ids.min()) and int(new_ids.max()) < 50 and mask.all() and not types.any()
    assert torch.equal(pos, torch.arange(9)[None]) and not kpm.any()
    assert probes["batch=4"].args[0].shape == (4, 6) and probes["batch=4"].args[3].shape == (1, 6)
    for side in ("right", "left"):
        _, mask, types, _, kpm = probes[f"padding={side}"].args
        assert (mask == 0).any() and (mask.sum(1) >= 1).all() and torch.equal(kpm, mask == 0)
        assert not types.any()  # token_type_ids are ids, not a mask
        cut = mask[:, -1] if side == "right" else mask[:, 0]
        assert (cut == 0).any()


def test_tiny_bert_passes_every_probe(torchvision) -> None:  # noqa: ANN001
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37)
    bert = transformers.BertModel(config).eval()
    ids, mask = torch.randint(0, 99, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    report = check(bert, copy.deepcopy(bert), (), {"input_ids": ids, "attention_mask": mask})
    assert report.ok, str(report)
    assert _statuses(report) == _statuses(report, "train") == {
        "example": "ok", "batch=1": "ok", "batch=3": "ok", "length=10": "ok", "padding=right": "ok",
        "padding=left": "ok", "repeat=3": "ok"}
