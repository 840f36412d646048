"""Shape rules agree with the real ops (Hypothesis over layer configs) and decline what would fail."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchgraft.frontends.leaf import to_primitive
from torchgraft.ir.activations import ActKind
from torchgraft.ir.primitives import Activation
from torchgraft.ir.shapes import RuleError, binary_output, cat_output, primitive_output

F32 = [torch.empty(1, device="meta")]  # the state of a float32 layer, as the rules see it


def _rule(layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    prim, why = to_primitive(layer)
    assert prim is not None, why
    state = [t.to("meta") for t in (*layer.parameters(), *layer.buffers()) if t.is_floating_point()]
    return primitive_output(prim, (x.to("meta"),), {}, state, layer.training)


def _same(rule: torch.Tensor | None, real: torch.Tensor) -> None:
    assert rule is not None
    assert (rule.shape, rule.dtype) == (real.shape, real.dtype)


@settings(max_examples=60, deadline=None)
@given(dims=st.sampled_from([1, 2, 3]), cin=st.integers(1, 4), cout=st.integers(1, 4), k=st.integers(1, 4),
       s=st.integers(1, 3), p=st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"])),
       d=st.integers(1, 2), size=st.integers(1, 9), batched=st.booleans(),
       mode=st.sampled_from(["zeros", "reflect", "circular", "replicate"]))
def test_conv_rule_matches_the_layer(dims: int, cin: int, cout: int, k: int, s: int, p: int | str, d: int,
                                     size: int, batched: bool, mode: str) -> None:
    if p == "same":
        s = 1
    layer = getattr(nn, f"Conv{dims}d")(cin, cout, k, stride=s, padding=p, dilation=d, padding_mode=mode)
    x = torch.randn(*((2,) if batched else ()), cin, *([size] * dims))
    try:
        real = layer(x)
    except (RuntimeError, NotImplementedError):  # kernel larger than the input, padding too wide, ...
        try:
            assert _rule(layer, x) is None
        except RuleError:
            pass
        return
    _same(_rule(layer, x), real)


@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(5, 3), (2, 7, 5)), (nn.Linear(5, 3, bias=False), (5,)),
    (nn.BatchNorm1d(4), (2, 4)), (nn.BatchNorm1d(4), (2, 4, 6)), (nn.BatchNorm2d(4), (2, 4, 3, 3)),
    (nn.BatchNorm3d(4), (1, 4, 2, 2, 2)), (nn.LayerNorm((3, 5)), (2, 3, 5)), (nn.GroupNorm(2, 4), (2, 4, 3)),
    (nn.ReLU(inplace=True), (2, 3)), (nn.GELU(), (4,)), (nn.Dropout(0.5), (2, 3)), (nn.Identity(), (3, 3)),
    (nn.Softplus(beta=2.0), (2, 2)),
])
def test_layer_rules_match_the_layer(layer: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    _same(_rule(layer.eval(), x), layer.eval()(x))


@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(5, 3), (2, 4)), (nn.BatchNorm2d(4), (2, 4, 3)), (nn.BatchNorm2d(4), (2, 5, 3, 3)),
    (nn.LayerNorm(5), (2, 4)), (nn.GroupNorm(2, 4), (2, 6)), (nn.Conv2d(3, 4, 3), (2, 5, 8, 8)),
    (nn.Conv2d(3, 4, 5), (1, 3, 2, 2)),
])
def test_rules_decline_what_the_layer_rejects(layer: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    with pytest.raises((RuntimeError, ValueError)):
        layer(x)
    assert _rule(layer, x) is None


def test_rules_decline_other_dtypes_and_extra_arguments() -> None:
    lin = nn.Linear(4, 2)
    prim, _ = to_primitive(lin)
    for dtype in (torch.float64, torch.int64):  # torch refuses these; its meta kernel may not
        with pytest.raises(RuleError, match="Linear: input"):
            primitive_output(prim, (torch.empty(3, 4, dtype=dtype, device="meta"),), {}, F32, False)
    relu = Activation.of(ActKind.RELU)
    assert primitive_output(relu, (torch.empty(2, device="meta"), 1), {}, [], False) is None
    x = torch.empty(2, device="meta")
    assert primitive_output(Activation.of(ActKind.RELU, inplace=True), (x,), {}, [], False) is x
    channels_last = torch.empty(2, 3, 4, 4, device="meta").to(memory_format=torch.channels_last)
    assert primitive_output(relu, (channels_last,), {}, [], False) is None  # the kernel keeps the strides


@pytest.mark.parametrize("layer,shape,training", [
    (nn.BatchNorm2d(4), (1, 4, 1, 1), True), (nn.BatchNorm1d(4), (1, 4), True),
    (nn.BatchNorm1d(4, track_running_stats=False), (1, 4), False), (nn.GroupNorm(4, 4), (1, 4), False),
    (nn.Conv2d(3, 3, 3, padding=2, padding_mode="reflect"), (1, 3, 2, 2), False),
    (nn.Conv2d(3, 3, 3, padding="same", padding_mode="reflect"), (1, 3, 1, 1), False),
    (nn.Conv1d(3, 3, 3, padding=3, padding_mode="circular"), (1, 3, 2), False),
])
def test_rules_refuse_what_only_the_real_kernel_refuses(layer: nn.Module, shape: tuple[int, ...],
                                                       training: bool) -> None:
    layer.train(training)
    x = torch.randn(shape)
    with pytest.raises((RuntimeError, ValueError)):
        layer(x)
    with pytest.raises(RuleError):
        _rule(layer, x)


def test_rules_accept_the_sizes_the_kernels_accept() -> None:
    for layer, shape in [(nn.BatchNorm2d(4).eval(), (1, 4, 1, 1)), (nn.GroupNorm(2, 4), (1, 4)),
                         (nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), (1, 3, 2, 2)),
                         (nn.Conv1d(3, 3, 3, padding=2, padding_mode="circular"), (1, 3, 2))]:
        x = torch.randn(shape)
        _same(_rule(layer, x), layer(x))
    assert _rule(nn.Dropout1d(), torch.randn(2, 3)) is None  # ranks checked by its own code


SHAPES = st.lists(st.integers(1, 3), min_size=0, max_size=3)
VALUES = st.one_of(st.tuples(SHAPES, st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool])),
                   st.integers(-3, 3), st.floats(-2, 2), st.booleans())


def _make(v: object) -> object:
    if isinstance(v, tuple):
        shape, dtype = v
        return (torch.randn(shape) * 3).to(dtype)
    return v


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["operator.add", "operator.sub", "operator.mul", "torch.add", "torch.mul", "mul",
                             "add", "operator.iadd", "operator.imul", "add_", "sub_"]),
       a=VALUES, b=VALUES)
def test_binary_rule_matches_broadcasting_and_promotion(name: str, a: object, b: object) -> None:
    import operator

    x, y = _make(a), _make(b)
    if not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor):
        return
    fn = {"operator": lambda n: getattr(operator, n), "torch": lambda n: getattr(torch, n)}
    ns, _, short = name.rpartition(".")
    try:
        if ns:
            real = fn[ns](short)(x.clone() if isinstance(x, torch.Tensor) else x, y)
        elif isinstance(x, torch.Tensor):
            real = getattr(x.clone(), short)(y)
        else:
            return
    except (RuntimeError, TypeError):
        meta = [v.to("meta") if isinstance(v, torch.Tensor) else v for v in (x, y)]
        try:
            assert binary_output(name, meta, {}) is None
        except RuleError:
            pass  # refused for the same reason
        return
    meta = [v.to("meta") if isinstance(v, torch.Tensor) else v for v in (x, y)]
    rule = binary_output(name, meta, {})
    if rule is not None or isinstance(x, torch.Tensor):  # in place on a Python number: declined, fine
        _same(rule, real)


def test_binary_rule_covers_the_common_cases() -> None:
    x, y = torch.empty(2, 3, device="meta"), torch.empty(3, device="meta")
    assert binary_output("operator.add", [x, y], {}).shape == (2, 3)
    assert binary_output("mul", [x, 0.5], {}).dtype == torch.float32
    assert binary_output("operator.iadd", [x, y], {}) is x
    assert binary_output("operator.add", [x, y], {"alpha": 2}) is None  # not a plain a + b
    assert binary_output("operator.truediv", [x, y], {}) is None  # no rule: the meta kernel runs
    assert binary_output("add", [x.t(), 1], {}) is None  # not contiguous: the kernel knows the strides
    assert binary_output("operator.iadd", [y.expand(2, 3), 1], {}) is None  # writes overlap: the kernel refuses
    with pytest.raises(RuleError):
        binary_output("operator.sub", [x.bool(), 1], {})


@settings(max_examples=40, deadline=None)
@given(heads=st.sampled_from([1, 2]), batch_first=st.booleans(), kdim=st.sampled_from([None, 6]),
       need=st.booleans(), average=st.booleans(), n=st.integers(1, 3), length=st.integers(1, 4),
       source=st.integers(1, 4), by_name=st.booleans())
def test_attention_rule_matches_the_layer(heads: int, batch_first: bool, kdim: int | None, need: bool,
                                          average: bool, n: int, length: int, source: int, by_name: bool) -> None:
    layer = nn.MultiheadAttention(4, heads, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    q_shape = (n, length, 4) if batch_first else (length, n, 4)
    k_shape = (n, source, kdim or 4) if batch_first else (source, n, kdim or 4)
    q, k = torch.randn(q_shape), torch.randn(k_shape)
    kwargs = {"need_weights": need, "average_attn_weights": average}
    args: tuple[torch.Tensor, ...] = (q, k, k)
    if by_name:
        kwargs.update(query=q, key=k, value=k)
        args = ()
    real = layer(*args, **kwargs)
    prim, why = to_primitive(layer)
    assert prim is not None, why
    meta_args = tuple(a.to("meta") for a in args)
    meta_kw = {key: v.to("meta") if isinstance(v, torch.Tensor) else v for key, v in kwargs.items()}
    rule = primitive_output(prim, meta_args, meta_kw, F32, False)
    assert rule is not None
    _same(rule[0], real[0])
    assert (rule[1] is None) == (real[1] is None)
    if real[1] is not None:
        _same(rule[1], real[1])


def test_attention_rule_declines_masks_and_mismatches() -> None:
    prim, _ = to_primitive(nn.MultiheadAttention(4, 2))
    q = torch.empty(3, 2, 4, device="meta")
    assert primitive_output(prim, (q, q, q), {"attn_mask": torch.empty(3, 3, device="meta")}, F32, False) is None
    assert primitive_output(prim, (q, q, torch.empty(3, 1, 4, device="meta")), {}, F32, False) is None
    assert primitive_output(prim, (q[0], q[0], q[0]), {}, F32, False) is None  # unbatched: the meta kernel decides
    with pytest.raises(RuleError):
        primitive_output(prim, (q, q, q.double()), {}, F32, False)


@pytest.mark.parametrize("shapes,dim", [([(2, 3), (2, 5)], 1), ([(2, 3), (4, 3)], 0), ([(1, 2, 3)] * 3, -1),
                                        ([(2, 3), (2, 4)], 0), ([(2, 3)], 5), ([(2, 3), (2,)], 0)])
def test_cat_rule_matches_torch_cat(shapes: list[tuple[int, ...]], dim: int) -> None:
    tensors = [torch.randn(s) for s in shapes]
    rule = cat_output(([t.to("meta") for t in tensors], dim), {})
    try:
        real = torch.cat(tensors, dim)
    except (RuntimeError, IndexError):
        assert rule is None
        return
    _same(rule, real)
    _same(cat_output(([t.to("meta") for t in tensors],), {"dim": dim}), real)


def _layouts() -> list[torch.Tensor]:
    """Meta inputs of shape (..., 6) in the layouts models make: contiguous, permuted (ConvNeXt), expanded,
    channels_last, an offset slice, size-1 dims, half precision."""
    x = torch.empty(2, 6, 5, 4, device="meta")
    return [torch.empty(2, 3, 6, device="meta"), x.permute(0, 2, 3, 1), torch.empty(1, 6, device="meta").expand(4, 6),
            torch.empty(2, 4, 5, 6, device="meta").to(memory_format=torch.channels_last),
            torch.empty(3, 8, device="meta")[:, 1:7], torch.empty(1, 1, 6, device="meta").transpose(0, 1),
            torch.empty(2, 6, 3, device="meta", dtype=torch.float16).transpose(1, 2)]


@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_rule_matches_the_meta_kernel_in_every_layout(affine: str) -> None:
    import torch.nn.functional as F

    from torchgraft.ir.shapes import layer_norm_output

    for x in _layouts():
        w = torch.empty(6, device="meta", dtype=x.dtype) if affine != "none" else None
        b = torch.empty(6, device="meta", dtype=x.dtype) if affine == "both" else None
        real = F.layer_norm(x, (6,), w, b, 1e-6)
        for args, kwargs in (((x, (6,), w, b, 1e-6), {}), ((x, [6]), {"weight": w, "bias": b})):
            rule = layer_norm_output(args, kwargs)
            assert rule is not None
            assert (rule.shape, rule.stride(), rule.dtype, rule.storage_offset()) == \
                (real.shape, real.stride(), real.dtype, real.storage_offset())
        layer = nn.LayerNorm(6, elementwise_affine=affine != "none", bias=affine == "both").to(x.dtype)
        prim = to_primitive(layer)[0]
        state = [t.to("meta") for t in layer.parameters()]
        rule = primitive_output(prim, (x,), {}, state, False)  # the layer, on a non-contiguous input too
        assert rule is not None and (rule.shape, rule.stride(), rule.dtype) == (real.shape, real.stride(), real.dtype)


def test_layer_norm_rule_declines_what_it_cannot_vouch_for() -> None:
    from torchgraft.ir.shapes import layer_norm_output

    x = torch.empty(2, 6, device="meta")
    w16 = torch.empty(6, device="meta", dtype=torch.float16)
    assert layer_norm_output((x, (6,), w16), {}) is None  # mixed dtypes: the kernel decides
    assert layer_norm_output((x, (3,)), {}) is None  # wrong normalized shape: the kernel raises
    assert layer_norm_output((x, (6,), torch.empty(3, device="meta")), {}) is None
    assert layer_norm_output((x.long(), (6,)), {}) is None
    assert layer_norm_output((x, (6,)), {"input": x}) is None  # input twice
    assert layer_norm_output((torch.empty(0, 6, device="meta"), (6,)), {}) is None
    with torch.enable_grad():
        assert layer_norm_output((x, (6,), torch.empty(6, device="meta", requires_grad=True)), {}) is None


@pytest.mark.parametrize("size", [1, (1, 1)])
def test_global_average_pool_rule_matches_the_meta_kernel(size: int | tuple[int, int]) -> None:
    layer = nn.AdaptiveAvgPool2d(size)
    for shape, dtype in [((2, 8, 7, 7), torch.float32), ((8, 7, 7), torch.float32), ((2, 3, 1, 5), torch.float16),
                         ((1, 1, 1, 1), torch.float64)]:
        x = torch.empty(shape, device="meta", dtype=dtype)
        rule, real = _rule(layer, x), layer(x)
        assert rule is not None and (rule.shape, rule.stride(), rule.dtype) == (real.shape, real.stride(), real.dtype)
    assert _rule(layer, torch.empty(2, 8, 0, 7, device="meta")) is None  # the kernel refuses empty sizes
    assert _rule(layer, torch.empty(2, 8, 7, 7, device="meta").to(memory_format=torch.channels_last)) is None
    assert _rule(nn.AdaptiveAvgPool2d(2), torch.empty(2, 8, 7, 7, device="meta")) is None  # not global: no rule
