"""Pipelines (text form, errors, dry runs, reports), the clean-up passes, and selectors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchgraft
from torchgraft.ir.nodes import Block, Chain, ClassRef
from torchgraft.ir.primitives import Activation, BatchNorm, Conv, Dropout, Identity, Linear
from torchgraft.ir.traverse import walk
from torchgraft.ir.verify import verify
from torchgraft.passes import (
    REGISTRY,
    Inside,
    Kind,
    PathGlob,
    PipelineError,
    Site,
    Where,
    make_pass,
    parse_pipeline,
    parse_selector,
    pipeline_text,
    run,
)
from torchgraft.passes.cleanup import EliminateIdentity, FlattenChains, RemoveDropout
from torchgraft.passes.fuse_conv_bn import FuseConvBN
from torchgraft.passes.swap_activation import SwapActivation


def _close(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-6) -> None:
    torch.testing.assert_close(out, ref, atol=rel * float(ref.abs().max()), rtol=0)


# --------------------------------------------------------------------------- text form


@pytest.mark.parametrize("text", [
    "swap-activation{to=gelu},fuse-conv-bn",
    "fuse-conv-bn",
    "swap-activation{to=gelu where=layer1.* approximate=tanh}",
    "swap-activation{from=gelu to=leaky_relu where=in:Bottleneck negative_slope=0.2}",
    "remove-dropout,eliminate-identity{where=~head.*},flatten-chains",
    "lora{where=blocks.*.attn.qkv r=4 alpha=8.0 dropout=0.1}",
    "replace-module{from=batchnorm to=groupnorm groups=16}",
])
def test_text_round_trip(text: str) -> None:
    passes = parse_pipeline(text)
    assert pipeline_text(passes) == text  # canonical texts (options in field order) are fixed points
    assert parse_pipeline(pipeline_text(passes)) == passes


@pytest.mark.parametrize("text, canonical", [
    ("swap-activation{from=relu to=silu},fuse-conv-bn", "swap-activation,fuse-conv-bn"),  # defaults left out
    ("swap-activation{approximate=tanh to=gelu}", "swap-activation{to=gelu approximate=tanh}"),
    (" remove-dropout , flatten-chains ", "remove-dropout,flatten-chains"),
    ("lora{r=4 alpha=8}", "lora{r=4 alpha=8.0}"),
])
def test_text_normal_form(text: str, canonical: str) -> None:
    assert pipeline_text(parse_pipeline(text)) == canonical
    assert parse_pipeline(canonical) == parse_pipeline(text)


def test_parse_builds_the_pass_objects() -> None:
    passes = parse_pipeline(" swap-activation { from=relu  to=leaky_relu negative_slope=0.2 } , fuse-conv-bn ")
    assert passes == [SwapActivation(from_="relu", to="leaky_relu", negative_slope=0.2), FuseConvBN()]
    assert isinstance(passes[0].negative_slope, float)
    # defaults are left out of the text form; "from" is spelled from_ in Python
    assert pipeline_text(passes) == "swap-activation{to=leaky_relu negative_slope=0.2},fuse-conv-bn"
    assert pipeline_text(parse_pipeline("swap-activation{from=relu to=silu}")) == "swap-activation"
    assert parse_pipeline("lora{r=4 alpha=8}")[0].alpha == 8.0
    assert parse_pipeline("swap-activation{negative_slope=none}")[0].negative_slope is None
    assert parse_pipeline("") == []


def test_every_registered_pass_round_trips_with_defaults() -> None:
    for name, cls in REGISTRY.items():
        assert cls.name == name
        assert pipeline_text([make_pass(name, {})]) == name
        assert parse_pipeline(name) == [cls()]


def test_unknown_pass_lists_registered_passes() -> None:
    with pytest.raises(PipelineError) as e:
        parse_pipeline("swap-activation,fuse-bn")
    msg = str(e.value)
    assert "unknown pass 'fuse-bn'" in msg
    for name in REGISTRY:
        assert name in msg


def test_unknown_option_lists_the_pass_options() -> None:
    with pytest.raises(PipelineError, match=r"pass 'swap-activation' has no option 'form'; its options: "
                                            r"alpha, approximate, from, negative_slope, to, where"):
        parse_pipeline("swap-activation{form=relu}")
    with pytest.raises(PipelineError, match=r"pass 'flatten-chains' has no option 'where'; its options: none"):
        parse_pipeline("flatten-chains{where=a.*}")


@pytest.mark.parametrize("text, match", [
    ("lora{r=four}", r"lora\{r=\.\.\.\}: 'four' is not a valid int"),
    ("lora{alpha=big}", r"'big' is not a valid float"),
    ("swap-activation{negative_slope=steep}", r"'steep' is not a valid float"),
    ("replace-module{groups=1.5}", r"'1.5' is not a valid int"),
    ("replace-module{factory=os.system}", r"factory=.*Python object.*no text form"),
    ("swap-activation{from}", r"option 'from' of 'swap-activation' must be key=value"),
    ("swap-activation{from=relu", r"cannot parse pipeline"),
    ("Fuse-Conv-BN", r"cannot parse pipeline"),
])
def test_bad_values_and_syntax(text: str, match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        parse_pipeline(text)


def test_pipeline_error_is_a_value_error() -> None:
    assert issubclass(PipelineError, ValueError) and issubclass(PipelineError, torchgraft.TorchgraftError)


# --------------------------------------------------------------------------- run: reports and dry runs


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.3)
        self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, 0.2, self.training)
        return self.fc(self.drop(self.skip(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Sequential(nn.Linear(4, 6), nn.ReLU()), nn.Identity(), nn.Dropout(0.5),
            nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6)), nn.Identity(), nn.Linear(6, 6))
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def net() -> tuple[nn.Module, torch.Tensor, torchgraft.ir.Model]:
    torch.manual_seed(0)
    module = Net().eval()
    x = torch.randn(3, 4)
    return module, x, torchgraft.capture(module, (x,))


def _remapped(module: nn.Module, reports: list[Any]) -> dict[str, torch.Tensor]:
    """The original state_dict carried through every report's key changes."""
    sd = dict(module.state_dict())
    for rep in reports:
        sd = {rep.keys_renamed.get(k, k): v for k, v in sd.items() if k not in rep.keys_removed}
    return sd


@pytest.mark.parametrize("pipeline, sites", [
    ("remove-dropout", {"body.2", "head.dropout", "head.drop"}),
    ("eliminate-identity", {"body.1", "body.4", "head.skip"}),
    ("flatten-chains", {"body.0", "body.3"}),
    ("remove-dropout,eliminate-identity,flatten-chains", None),
])
def test_cleanup_passes_keep_outputs_and_original_weights_load(net: Any, pipeline: str, sites: set[str] | None
                                                               ) -> None:
    module, x, model = net
    result = run(model, pipeline)
    verify(result.model)
    if sites is not None:
        assert {m.path for m in result.reports[0].matches} == sites
    emitted = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        _close(emitted(x), module(x))
    fresh = torchgraft.emit(result.model).materialize(load_weights=False).eval()
    fresh.load_state_dict(_remapped(module, result.reports), strict=True)  # renamed keys are right
    with torch.no_grad():
        _close(fresh(x), module(x))
    for rep in result.reports:
        assert rep.params_before == rep.params_after == sum(p.numel() for p in module.parameters())
        assert not rep.keys_added and not rep.keys_removed


def test_cleanup_leaves_no_dropout_identity_or_nesting(net: Any) -> None:
    _, _, model = net
    new = run(model, "remove-dropout,eliminate-identity,flatten-chains").model
    nodes = [n for _, n in walk(new.root)]
    assert not any(isinstance(n, (Dropout, Identity)) for n in nodes)
    body = dict(walk(new.root))["body"]
    assert isinstance(body, Chain) and not any(isinstance(c, Chain) for c in body.items)
    assert "dropout" not in torchgraft.emit(new).source


def test_eliminate_identity_report_renames_shifted_keys() -> None:
    module = nn.Sequential(nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 5), nn.ReLU(), nn.Identity(),
                           nn.Linear(5, 2)).eval()
    x = torch.randn(2, 4)
    model = torchgraft.capture(module, (x,))
    result = run(model, "eliminate-identity")
    rep = result.reports[0]
    assert [m.path for m in rep.matches] == ["1", "4"]
    assert rep.keys_renamed == {"2.weight": "1.weight", "2.bias": "1.bias", "5.weight": "3.weight",
                                "5.bias": "3.bias"}
    assert not rep.keys_added and not rep.keys_removed
    assert rep.params_before == rep.params_after == 4 * 4 + 4 + 4 * 5 + 5 + 5 * 2 + 2
    assert "keys renamed: 2.weight -> 1.weight" in str(rep)
    emitted = torchgraft.emit(result.model).materialize(load_weights=False).eval()
    emitted.load_state_dict({rep.keys_renamed.get(k, k): v for k, v in module.state_dict().items()}, strict=True)
    with torch.no_grad():
        _close(emitted(x), module(x))


def test_eliminate_identity_nested_sequentials() -> None:
    module = nn.Sequential(nn.Identity(), nn.Sequential(nn.Linear(3, 3), nn.Identity(), nn.Linear(3, 3))).eval()
    x = torch.randn(2, 3)
    result = run(torchgraft.capture(module, (x,)), "eliminate-identity")
    assert result.reports[0].keys_renamed == {"1.0.weight": "0.0.weight", "1.0.bias": "0.0.bias",
                                              "1.2.weight": "0.1.weight", "1.2.bias": "0.1.bias"}
    emitted = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        _close(emitted(x), module(x))


def test_dry_run_returns_the_original_model_and_a_full_report(net: Any) -> None:
    _, _, model = net
    pipeline = "remove-dropout,eliminate-identity,flatten-chains"
    real = run(model, pipeline)
    dry = run(model, pipeline, dry_run=True)
    assert dry.model is model
    assert [r.name for r in dry.reports] == ["remove-dropout", "eliminate-identity", "flatten-chains"]
    for a, b in zip(dry.reports, real.reports, strict=True):
        assert (a.matches, a.keys_added, a.keys_removed, a.keys_renamed, a.params_before, a.params_after) == \
            (b.matches, b.keys_added, b.keys_removed, b.keys_renamed, b.params_before, b.params_after)
    assert dry.reports[1].keys_renamed and dry.report == real.report


def test_run_accepts_pass_objects_and_reports_per_pass(net: Any) -> None:
    module, x, model = net
    result = run(model, [RemoveDropout(where="head.*"), EliminateIdentity(where="head.*"), FlattenChains()])
    assert {m.path for m in result.reports[0].matches} == {"head.dropout", "head.drop"}
    assert {m.path for m in result.reports[1].matches} == {"head.skip"}
    assert result.report.splitlines()[0].startswith("remove-dropout: 2 site(s)")
    single = run(model, RemoveDropout())
    assert len(single.reports) == 1 and len(single.reports[0].matches) == 3


def test_swap_and_fuse_report(net: Any) -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(1, 3, 6, 6)
    result = run(torchgraft.capture(conv, (x,)), "swap-activation{from=relu to=silu},fuse-conv-bn")
    swap, fuse = result.reports
    assert [str(m) for m in swap.matches] == ["2 (relu, module)"]
    assert [m.path for m in fuse.matches] == ["0"]
    assert fuse.keys_added == ["0.bias"]
    assert fuse.keys_removed == ["1.bias", "1.num_batches_tracked", "1.running_mean", "1.running_var", "1.weight"]
    assert (fuse.params_before, fuse.params_after) == (3 * 4 * 9 + 8, 3 * 4 * 9 + 4)


@pytest.fixture(scope="module")
def resnet(torchvision: Any) -> tuple[nn.Module, torch.Tensor, torchgraft.ir.Model]:
    torch.manual_seed(0)
    module = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    return module, x, torchgraft.capture(module, (x,))


def test_remove_dropout_resnet18(resnet: Any) -> None:
    module, x, model = resnet
    result = run(model, "remove-dropout")  # resnet18 has no dropout: nothing may change
    rep = result.reports[0]
    assert not rep.matches and not rep.keys_removed and not rep.keys_renamed
    assert [(p, type(n)) for p, n in walk(result.model.root)] == [(p, type(n)) for p, n in walk(model.root)]
    emitted = torchgraft.emit(result.model).materialize().eval()
    assert emitted.state_dict().keys() == module.state_dict().keys()
    with torch.no_grad():
        _close(emitted(x), module(x), 1e-5)


def test_remove_dropout_mobilenet(torchvision: Any) -> None:
    torch.manual_seed(0)
    module = torchvision.models.mobilenet_v3_small().eval()
    x = torch.randn(1, 3, 64, 64)
    result = run(torchgraft.capture(module, (x,)), "remove-dropout")
    assert [m.path for m in result.reports[0].matches] == ["classifier.2"]
    emitted = torchgraft.emit(result.model).materialize().eval()
    assert emitted.state_dict().keys() == module.state_dict().keys()
    with torch.no_grad():
        _close(emitted(x), module(x), 1e-5)
    emitted.train()
    module.train()
    torch.manual_seed(1)
    a = emitted.classifier(torch.ones(4, 576))
    torch.manual_seed(1)
    b = module.classifier(torch.ones(4, 576))
    assert not torch.equal(a, b)  # training mode: the original drops, the rewritten one does not


def test_where_glob_on_resnet18(resnet: Any) -> None:
    _, _, model = resnet
    result = run(model, "fuse-conv-bn{where=layer[12].*}")
    paths = [m.path for m in result.reports[0].matches]
    assert len(paths) == 9 and all(p.startswith(("layer1.", "layer2.")) for p in paths)
    assert "layer2.0.downsample.0" in paths


# --------------------------------------------------------------------------- selectors


CONV = Conv("Conv2d", 3, 8, 3)
BN = BatchNorm("BatchNorm2d", 8)
RELU = Activation()
LINEAR = Linear("Linear", 4, 4)
BOTTLENECK = Block(ClassRef("torchvision.models.resnet", "Bottleneck"), (("conv1", CONV),), Chain())


def _site(path: str, node: Any = CONV, enclosing: tuple[str, ...] = ()) -> Site:
    return Site(path, node, enclosing)


@pytest.mark.parametrize("path, hit", [
    ("layer1.0.conv1", True),
    ("layer2.1.downsample.0", True),
    ("layer3.0.conv1", False),
    ("layer12.0", False),
    ("layer1", False),
    ("xlayer1.0", False),
])
def test_path_glob(path: str, hit: bool) -> None:
    assert PathGlob("layer[12].*")(_site(path)) is hit
    assert parse_selector("layer[12].*")(_site(path)) is hit


def test_path_glob_segments() -> None:
    sel = PathGlob("blocks.*.attn.qkv")
    assert sel(_site("blocks.3.attn.qkv")) and not sel(_site("blocks.3.attn.proj"))
    assert PathGlob("fc")(_site("fc")) and not PathGlob("fc")(_site("head.fc"))


def test_kind() -> None:
    assert Kind("Conv2d")(_site("c", CONV)) and Kind("Conv")(_site("c", CONV))  # torch op, primitive family
    assert not Kind("Conv1d")(_site("c", CONV)) and not Kind("Conv2d")(_site("b", BN))
    assert Kind("BatchNorm")(_site("b", BN)) and Kind("BatchNorm2d")(_site("b", BN))
    assert Kind("ReLU")(_site("r", RELU)) and Kind("Activation")(_site("r", RELU))
    assert Kind("Bottleneck")(_site("layer1.0", BOTTLENECK))  # a Block's original class
    assert Kind("torchvision.models.resnet.Bottleneck")(_site("layer1.0", BOTTLENECK))
    assert not Kind("BasicBlock")(_site("layer1.0", BOTTLENECK))
    assert Kind("Chain")(_site("layer1", Chain(CONV, BN)))
    assert parse_selector("kind:Linear") == Kind("Linear") and str(Kind("Linear")) == "kind:Linear"


def test_inside() -> None:
    inside = Inside("Bottleneck")
    assert inside(_site("layer1.0.conv1", CONV, ("ResNet", "Bottleneck")))
    assert not inside(_site("conv1", CONV, ("ResNet",)))
    assert not inside(_site("layer1.0", BOTTLENECK, ("ResNet",)))  # the block itself is not inside itself
    assert parse_selector("in:Bottleneck") == inside and str(inside) == "in:Bottleneck"


def test_combinators() -> None:
    inner = _site("layer1.0.conv1", CONV, ("ResNet", "Bottleneck"))
    inner_bn = _site("layer1.0.bn1", BN, ("ResNet", "Bottleneck"))
    stem = _site("conv1", CONV, ("ResNet",))
    conv_inside = Kind("Conv") & Inside("Bottleneck")
    assert conv_inside(inner) and not conv_inside(inner_bn) and not conv_inside(stem)
    either = PathGlob("conv1") | Kind("BatchNorm")
    assert either(stem) and either(inner_bn) and not either(inner)
    assert (~Inside("Bottleneck"))(stem) and not (~Inside("Bottleneck"))(inner)
    assert (~~PathGlob("conv1"))(stem)
    assert str(conv_inside) == "(kind:Conv & in:Bottleneck)" and str(~PathGlob("a.*")) == "~a.*"
    assert str(either) == "(conv1 | kind:BatchNorm)"


def test_parse_selector_forms() -> None:
    for everything in (None, "", "*"):
        assert parse_selector(everything)(_site("anything"))
    negated = parse_selector("~in:Bottleneck")
    assert negated(_site("conv1", CONV, ("ResNet",))) and not negated(_site("l.0.c", CONV, ("Bottleneck",)))
    assert not parse_selector("~layer1.*")(_site("layer1.0")) and parse_selector("~layer1.*")(_site("fc"))
    pred = parse_selector(lambda s: s.path.endswith("qkv"))
    assert isinstance(pred, Where) and pred(_site("a.qkv")) and not pred(_site("a.proj"))
    sel = PathGlob("x")
    assert parse_selector(sel) is sel


def test_selector_objects_in_passes(net: Any) -> None:
    module, x, model = net
    result = run(model, [EliminateIdentity(where=PathGlob("body.*") & ~PathGlob("*.4"))])
    assert [m.path for m in result.reports[0].matches] == ["body.1"]
    emitted = torchgraft.emit(result.model).materialize().eval()
    with torch.no_grad():
        _close(emitted(x), copy.deepcopy(module)(x))


@pytest.mark.parametrize("pipeline, sites", [
    ([RemoveDropout(where=Inside("Head") & Kind("Dropout"))], ["head.drop", "head.dropout"]),  # F.dropout too
    ("remove-dropout{where=body.*}", ["body.2"]),
    ("eliminate-identity{where=in:Head}", ["head.skip"]),
])
def test_cleanup_where_is_respected(net: Any, pipeline: Any, sites: list[str]) -> None:
    _, _, model = net
    assert sorted(m.path for m in run(model, pipeline).reports[0].matches) == sites


def test_types_keep_their_device_after_a_pass(net: Any) -> None:
    _, _, model = net
    new = run(model, "remove-dropout").model
    assert new.output_type == model.output_type
    before = dict(model.types)
    assert new.types and all(t == before[p] for p, t in new.types if p in before)  # re-inferred on meta, same types
    assert all(getattr(t, "device", "cpu") == "cpu" for _, t in new.types)
