"""Which parameters of a training system train: the ``trainable`` selector less the frozen ones.

``trainable`` is matched against parameter keys, one ``Site`` per parameter: its path is the key
(``"generator.0.weight"``), its node the layer or Block that owns it, ``enclosing`` the classes
of the Blocks around it (the owner's too). So ``"*"``, ``"generator.*"``, ``"*.lora_*"``,
``"kind:Linear"``, ``"in:LoRALinear"`` and ``"~backbone.*"`` all read as expected. A dict maps
model names to selectors matched against that model's own keys (``{"classifier": "fc.*"}``);
a model it leaves out does not train. A parameter frozen in its model (``requires_grad=False``,
``ir.Model.frozen``) never trains, whatever selects it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Union

from torchgraft.backends.torch.emitter import frozen_keys
from torchgraft.ir.model import Model
from torchgraft.ir.nodes import Block, Opaque
from torchgraft.ir.primitives import Primitive
from torchgraft.ir.traverse import join
from torchgraft.passes.selectors import Selector, SelectorLike, Site, enclosing_label, parse_selector
from torchgraft.passes.sites import iter_sites
from torchgraft.system.errors import SystemSpecError

TrainableLike = Union[SelectorLike, Mapping[str, SelectorLike]]


def parameter_sites(model: Model, prefix: str = "") -> Iterator[Site]:
    """One Site per parameter of ``model``, its path the state_dict key (under ``prefix``).

    >>> [s.path for s in parameter_sites(tg.build(ir.Linear(2, 3), ir.TensorType(("N", 2))))]  # doctest: +SKIP
    ['weight', 'bias']
    """
    for site in iter_sites(model, graphs=False):
        node = site.node
        if isinstance(node, Primitive):
            names = [n for n, _, is_param in node.state() if is_param]
        elif isinstance(node, (Block, Opaque)):
            names = [s.name for s in node.state if s.parameter]
        else:
            continue
        own = site.enclosing + (enclosing_label(node) if isinstance(node, Block) else ())
        for name in names:
            yield Site(join(join(prefix, site.path), name), node, own)


def _selector(trainable: TrainableLike, name: str, models: Mapping[str, Model]) -> tuple[Selector | None, str]:
    """(selector, prefix its paths carry) for model ``name``; None: the dict leaves the model out."""
    if isinstance(trainable, Mapping):
        unknown = [k for k in trainable if k not in models]
        if unknown:
            raise SystemSpecError(f"trainable names {unknown!r}, which are not models; the models are "
                                  f"{list(models)}")
        return (parse_selector(trainable[name]) if name in trainable else None), ""
    return parse_selector(trainable), name


def trainable_keys(models: Mapping[str, Model], trained: tuple[str, ...], trainable: TrainableLike
                   ) -> dict[str, tuple[str, ...]]:
    """The keys (within each model) of the parameters that train, for every model in ``trained``;
    an error when a trained model has none.

    >>> trainable_keys({"net": net}, ("net",), "*")  # doctest: +SKIP
    {'net': ('weight', 'bias')}
    """
    out: dict[str, tuple[str, ...]] = {}
    for name, model in models.items():
        sel, prefix = _selector(trainable, name, models)
        if name not in trained:
            continue
        frozen = set(frozen_keys(model))
        start = len(prefix) + 1 if prefix else 0
        picked = [s.path[start:] for s in parameter_sites(model, prefix) if sel is not None and sel(s)]
        keys = tuple(k for k in picked if k not in frozen)
        if not keys:
            raise SystemSpecError(_nothing(name, trainable, picked))
        out[name] = keys
    return out


def _nothing(name: str, trainable: TrainableLike, picked: list[str]) -> str:
    if picked:
        return (f"trainable selects only frozen parameters of model {name!r} ({', '.join(picked[:3])}"
                f"{', ...' if len(picked) > 3 else ''}; requires_grad=False in the model): nothing would train. "
                "Unfreeze them before capture, or select parameters that are not frozen")
    if isinstance(trainable, Mapping) and name not in trainable:
        return (f"trainable leaves out model {name!r}, which has a loss and an optimizer; add "
                f"{name!r}: \"*\" (or a selector of its parameters) to trainable")
    shown = trainable.get(name) if isinstance(trainable, Mapping) else trainable
    keys = "the model's own keys" if isinstance(trainable, Mapping) else f"keys such as \"{name}.<param>\""
    return (f"trainable={str(shown)!r} selects no parameter of model {name!r}; it is matched against parameter "
            f"keys ({keys}), e.g. \"*\", \"{'' if isinstance(trainable, Mapping) else name + '.'}head.*\"")


def frozen_for_system(models: Mapping[str, Model], trains: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """System-level keys of every parameter that does not train (all of an untrained model's).

    >>> frozen_for_system({"net": net}, {"net": ("fc.weight",)})  # doctest: +SKIP
    ('net.conv.weight', 'net.fc.bias')
    """
    out = []
    for name, model in models.items():
        keep = {_owner(k, model.ties) for k in trains.get(name, ())}
        out += [s.path for s in parameter_sites(model, name) if _owner(s.path[len(name) + 1:], model.ties) not in keep]
    return tuple(out)


def _owner(key: str, ties: tuple[tuple[str, str], ...]) -> str:
    """The key that owns ``key`` when it is a tied alias (of a parameter or of a shared module)."""
    for alias, target in ties:
        if key == alias or key.startswith(alias + "."):
            return target + key[len(alias):]
    return key
