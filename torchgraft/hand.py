"""Hand-built IR → a typed ``ir.Model`` (the Flux/Axon way of writing models as data).

    >>> net = Chain(Conv2d(3, 16, 3, padding=1), BatchNorm2d(16), ReLU())   # doctest: +SKIP
    >>> model = build_model(net, TensorType(("N", 3, 32, 32)))               # doctest: +SKIP
    >>> str(model.output_type)                                               # doctest: +SKIP
    'f32[N, 16, 32, 32]'

Types are inferred by the same code that re-types a model after a rewrite (``retype``): the
modules are built on the meta device straight from the IR (``retype_build``, no code emitted,
nothing imported) and the IR is replayed at several trial sizes for the symbolic dims
(``retype_dims``): every module path's output type, and every op's in a Block, is recorded, with
dims derived from symbols written as expressions (``N*4``, ``N*T``). A model that does not run
fails with an IRError naming the innermost module (or op) that raised, its input types written
symbolically, and the error torch gave (``retype_failure``).
"""

from __future__ import annotations

import warnings

import torch

from torchgraft.backends.torch.emitter import emit
from torchgraft.errors import IRError
from torchgraft.ir.graph import Input
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Node
from torchgraft.ir.types import TensorType, is_dim_expr
from torchgraft.retype import RetypeWarning, retype
from torchgraft.retype_build import blocker
from torchgraft.retype_failure import explain_failure

SUBJECT = "the hand-built model"


def _check(inputs: tuple[TensorType, ...]) -> None:
    """Refuse input types the trial sizes cannot be given for: not tensors, derived dims, none at all."""
    if not inputs:
        raise IRError("a hand-built model needs at least one input type (TensorType((\"N\", 8)), say)")
    for t in inputs:
        if not isinstance(t, TensorType):
            raise IRError(f"hand-built model inputs must be TensorTypes, got {t!r}")
        bad = [d for d in t.shape if isinstance(d, str) and is_dim_expr(d) and not d.isidentifier()]
        if bad:
            raise IRError(f"input type {t} has derived dims {bad}; give inputs plain symbols ('N') or sizes")


def infer_types(root: Node, inputs: tuple[TensorType, ...], name: str = "Model") -> Model:
    """A typed Model for a hand-built IR tree, given input types (symbols such as ``"N"``, ``"T"`` allowed).

    >>> infer_types(Chain(LinearLayer(8, 4)), (TensorType(("N", 8)),)).output_type  # doctest: +SKIP
    TensorType(shape=('N', 4), dtype='float32', device='cpu')
    """
    _check(tuple(inputs))
    bare = Model(name, root, tuple(Input(f"x{i}" if i else "x", t) for i, t in enumerate(inputs)))
    why = blocker(bare)
    if why is not None:
        raise IRError(f"{SUBJECT} cannot be typed from its IR: {why}; build it from IR nodes only")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RetypeWarning)  # _check makes it callable: never silently untyped
            return retype(bare)
    except IRError:
        explained = explain_failure(bare, SUBJECT)
        if explained is None:
            raise
        error, cause = explained
        raise error from cause
    except RetypeWarning as w:
        raise IRError(f"{SUBJECT} cannot be typed: {w}") from w


def build_model(root: Node, *inputs: TensorType, seed: int = 0, name: str = "Model") -> Model:
    """A typed Model with freshly initialised weights, ready to emit, save and load.

    The weights come from ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``: the same
    seed gives the same weights, and the caller's global RNG state is left as it was. They are the
    ones the emitted ``model.py``'s ``build()`` makes (in its order of construction, so a seed keeps
    its weights); the types never need emitted code (``infer_types``).

    >>> model = build_model(Chain(LinearLayer(8, 4)), TensorType(("N", 8)), seed=1)  # doctest: +SKIP
    >>> sorted(model.weights)                                                        # doctest: +SKIP
    ['0.bias', '0.weight']
    """
    typed = infer_types(root, tuple(inputs), name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = emit(typed, formatted=False).materialize(load_weights=False)
    state = {k: v.detach() for k, v in module.state_dict().items()}
    return Model(typed.name, typed.root, typed.inputs, typed.output_type, typed.types, weights=state)


build = build_model
"""``torchgraft.build(net, *input_types, seed=0, name="Model")``: the same function as ``build_model``."""
