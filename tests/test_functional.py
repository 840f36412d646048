"""``torchgraft.functional``: seeded init that leaves the global RNG alone, a pure predict, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchgraft as tg
from torchgraft import ir
from torchgraft.hand import infer_types


@pytest.fixture(scope="module")
def original() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    with torch.no_grad():  # running statistics that are not the defaults
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.fixture(scope="module")
def model(original: nn.Module) -> ir.Model:
    return tg.capture(original, (torch.randn(4, 6),))


PARAMS = ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
BUFFERS = ["1.running_mean", "1.running_var", "1.num_batches_tracked"]


def test_init_is_seeded_and_leaves_the_global_rng_alone(model: ir.Model) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    init, _ = tg.functional(model)
    first, again, other = init(seed=0), init(seed=0), init(seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert list(first) == PARAMS + BUFFERS and init.trainable == tuple(PARAMS)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["0.weight"], other["0.weight"])
    torch.manual_seed(0)  # the same as the emitted build() under that seed
    built = tg.emit(model).materialize(load_weights=False).state_dict()
    assert all(torch.equal(first[k], built[k]) for k in first)


def test_init_without_seed_is_the_models_own_weights(model: ir.Model) -> None:
    init, _ = tg.functional(model)
    own = init()
    assert all(torch.equal(own[k], model.weights[k]) for k in own)
    own["0.weight"].add_(1.0)  # a copy: the next call is unchanged
    assert torch.equal(init()["0.weight"], model.weights["0.weight"])
    bare = infer_types(ir.Chain(ir.LinearLayer(3, 2)), (ir.TensorType(("N", 3)),))  # no weights: seed 0
    init_bare, _ = tg.functional(bare)
    assert not bare.weights and torch.equal(init_bare()["0.weight"], init_bare(seed=0)["0.weight"])


def test_predict_is_pure_and_matches_the_module(model: ir.Model, original: nn.Module) -> None:
    init, predict = tg.functional(model)
    params = init()
    kept = {k: v.clone() for k, v in params.items()}
    x = torch.randn(5, 6)
    y = predict(params, x)
    torch.testing.assert_close(y, original(x), rtol=1e-6, atol=1e-6)  # eval mode by default
    torch.testing.assert_close(predict(params, x), y, rtol=0, atol=0)
    y_train, buffers = predict(params, x, train=True, seed=7)
    assert all(torch.equal(params[k], kept[k]) for k in params)  # buffers were copied, not updated in place
    reference = copy.deepcopy(original).train()
    rng = torch.random.get_rng_state()
    torch.manual_seed(7)
    expected = reference(x)
    torch.random.set_rng_state(rng)
    torch.testing.assert_close(y_train, expected, rtol=1e-6, atol=1e-6)
    assert set(buffers) == set(BUFFERS) and int(buffers["1.num_batches_tracked"]) == 1
    torch.testing.assert_close(buffers["1.running_mean"], reference[1].running_mean, rtol=1e-6, atol=1e-6)
    again, _ = predict(params, x, train=True, seed=7)
    torch.testing.assert_close(again, y_train, rtol=0, atol=0)
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_gradients_with_torch_func_and_autograd(model: ir.Model, original: nn.Module) -> None:
    init, predict = tg.functional(model)
    params = init()
    x, target = torch.randn(5, 6), torch.randn(5, 3)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((predict(p, x) - target) ** 2).mean()

    grads = torch.func.grad(lambda p: loss({**params, **p}))({k: params[k] for k in PARAMS})
    reference = copy.deepcopy(original).eval()
    ((reference(x) - target) ** 2).mean().backward()
    named = dict(reference.named_parameters())
    for k in PARAMS:
        torch.testing.assert_close(grads[k], named[k].grad, rtol=1e-5, atol=1e-6)
    leaves = {k: v.clone().requires_grad_(k in PARAMS) for k, v in params.items()}
    loss(leaves).backward()
    torch.testing.assert_close(leaves["4.weight"].grad, named["4.weight"].grad, rtol=1e-5, atol=1e-6)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def test_tied_weights_appear_once_and_get_both_gradients() -> None:
    torch.manual_seed(3)
    tied = Tied()
    init, predict = tg.functional(tg.capture(tied, (torch.randn(2, 4),)))
    params = {k: v.requires_grad_() for k, v in init().items()}
    assert list(params) == ["a.weight", "a.bias"]
    x = torch.randn(3, 4)
    predict(params, x).sum().backward()
    tied(x).sum().backward()
    assert tied.a.weight.grad is not None
    torch.testing.assert_close(params["a.weight"].grad, tied.a.weight.grad, rtol=1e-5, atol=1e-6)


def test_bad_params_and_seeds_are_refused(model: ir.Model) -> None:
    init, predict = tg.functional(model)
    params = init()
    with pytest.raises(tg.IRError, match=r"params lack \['4.bias'\]"):
        predict({k: v for k, v in params.items() if k != "4.bias"}, torch.randn(2, 6))
    with pytest.raises(tg.IRError, match=r"unknown \['5.weight'\]"):
        predict({**params, "5.weight": torch.zeros(1)}, torch.randn(2, 6))
    with pytest.raises(tg.IRError, match="seed must be an int"):
        init(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(tg.IRError, match="no submodule 'nope'"):
        predict.child("nope")
    torch.testing.assert_close(predict.child("4")(params, torch.ones(2, 8)),
                               torch.ones(2, 8) @ params["4.weight"].T + params["4.bias"], rtol=1e-6, atol=1e-6)
