"""Model specs: the text a user gives the CLI to name a model, and loading it.

A SPEC is one of:

- ``package.module:callable`` (or ``path/to/file.py:callable``): the callable returns a
  model, or ``(model, args)``, or ``(model, args, kwargs)``. The attribute may be dotted
  (``pkg.mod:Factory.small``); an ``nn.Module`` instance is used as is. The current
  folder is importable, as with ``python -m``.
- ``torchvision:NAME`` / ``timm:NAME``: a model from that zoo, random weights (nothing is
  downloaded), example input ``1x3x224x224`` (299 for inception_v3; timm: the model's
  own ``input_size``).
- a folder torchgraft emitted (``model.py`` + ``weights.safetensors``): ``model.py`` is
  imported and ``load()`` called (``build()`` when there are no weights). When the folder
  holds ``example_inputs.safetensors`` (``torchgraft rewrite`` writes it), those are the
  example inputs.

``--input 1x3x224x224`` (one per positional input, with ``--dtype``) gives example
inputs; it replaces the positional inputs a spec brings. Loaded models are put in eval
mode, as torchinfo does: summaries and pictures describe the inference model.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchgraft.errors import TorchgraftError

EXAMPLE_INPUTS = "example_inputs.safetensors"
"""File name of the example inputs ``torchgraft rewrite`` saves beside ``model.py``."""

ZOO_INPUT_SIZE = {"inception_v3": 299}
_TORCHVISION_LIBS: list[Any] = []


class SpecError(TorchgraftError, ValueError):
    """A model spec cannot be loaded, or gives no example inputs; the message says how to fix it."""


@dataclass
class LoadedModel:
    """A model named by a spec, with its example inputs (``args`` empty when it has none)."""

    spec: str
    module: nn.Module
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def has_inputs(self) -> bool:
        """Whether there is anything to run the model on."""
        return bool(self.args or self.kwargs)


def import_torchvision() -> Any:
    """Import torchvision on a CPU-only torch build.

    torchvision's compiled ops may fail to load (they need CUDA libraries); it then
    registers fake kernels for ``torchvision::nms``/``qnms``, which were never defined.
    Defining the two op schemas first makes the model zoo importable.
    """
    if "torchvision" not in sys.modules and not _TORCHVISION_LIBS:
        try:
            lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _TORCHVISION_LIBS.append(lib)
        except RuntimeError:  # already defined (e.g. by the test suite's own helper)
            pass
    import torchvision

    return torchvision


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` → ``(1, 3, 224, 224)``; SpecError naming the fix otherwise."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 0 for d in shape):
        raise SpecError(f"--input {text!r} is not a shape; write sizes joined by 'x', e.g. --input 1x3x224x224")
    return shape


def example_input(shape: tuple[int, ...], dtype: str = "float32") -> torch.Tensor:
    """A seeded example tensor: normal floats, integers in [0, 16), or random booleans."""
    dt = getattr(torch, dtype, None)
    if not isinstance(dt, torch.dtype):
        raise SpecError(f"--dtype {dtype!r} is not a torch dtype; use e.g. float32, float16, int64, bool")
    gen = torch.Generator().manual_seed(0)
    if dt == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dt.is_floating_point or dt.is_complex:
        return torch.randn(shape, generator=gen).to(dt)
    return torch.randint(0, 16, shape, generator=gen).to(dt)


def load_spec(spec: str, inputs: list[str] | None = None, dtype: str = "float32") -> LoadedModel:
    """Load the model a spec names (in eval mode), with ``--input`` shapes replacing its positional inputs."""
    loaded = _load(spec)
    if inputs:
        loaded.args = tuple(example_input(parse_shape(s), dtype) for s in inputs)
    loaded.module.eval()
    return loaded


def require_inputs(loaded: LoadedModel) -> LoadedModel:
    """``loaded``, or SpecError saying to pass ``--input`` when the spec gave no example inputs."""
    if not loaded.has_inputs:
        raise SpecError(f"{loaded.spec!r} gives no example inputs; pass their shapes, e.g. --input 1x3x224x224 "
                        "(one --input per positional input, --dtype for non-float inputs)")
    return loaded


def _load(spec: str) -> LoadedModel:
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ("torchvision", "timm") and rest:
        return _zoo(spec, prefix, rest)
    path = Path(spec)
    if path.is_dir():
        return _folder(spec, path)
    if not sep or not rest:
        hint = f"no folder {spec!r} exists and it " if not path.exists() else "it "
        raise SpecError(f"bad model spec {spec!r}: {hint}is not 'package.module:callable', 'torchvision:NAME' "
                        "or a folder torchgraft emitted; e.g. torchgraft.examples.nets:example")
    target = _attribute(_import(prefix, spec), rest, spec)
    return _normalize(spec, target if isinstance(target, nn.Module) else _call(target, spec))


def _import(module: str, spec: str) -> Any:
    if module.endswith(".py") or "/" in module:
        file = Path(module)
        if not file.is_file():
            raise SpecError(f"bad model spec {spec!r}: no file {module!r}")
        from torchgraft.backends.torch.emitter import import_file

        return import_file(file)
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise SpecError(f"bad model spec {spec!r}: cannot import {module!r} ({e}); check the module name "
                        "and that it is importable from the current folder") from e


def _attribute(module: Any, dotted: str, spec: str) -> Any:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise SpecError(f"bad model spec {spec!r}: {module.__name__} has no attribute {dotted!r}; "
                            f"callables there: {', '.join(public[:12]) or 'none'}")
        obj = getattr(obj, part)
    return obj


def _call(target: Any, spec: str) -> Any:
    if not callable(target):
        raise SpecError(f"bad model spec {spec!r}: {type(target).__name__} is not callable; "
                        "name a function or class that returns the model")
    try:
        return target()
    except TypeError as e:
        raise SpecError(f"calling {spec!r} with no arguments failed ({e}); wrap it in a function that takes "
                        "none and returns the model") from e


def _normalize(spec: str, value: Any) -> LoadedModel:
    """model | (model, args) | (model, args, kwargs) → LoadedModel."""
    if isinstance(value, nn.Module):
        return LoadedModel(spec, value)
    if isinstance(value, (tuple, list)) and 2 <= len(value) <= 3 and isinstance(value[0], nn.Module):
        args = value[1]
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        kwargs = dict(value[2]) if len(value) == 3 and value[2] is not None else {}
        return LoadedModel(spec, value[0], args, kwargs)
    raise SpecError(f"{spec!r} returned {type(value).__name__}; it must return an nn.Module, "
                    "(model, args) or (model, args, kwargs)")


def _zoo(spec: str, zoo: str, name: str) -> LoadedModel:
    if zoo == "timm":
        try:
            import timm
        except ImportError:
            raise SpecError(f"{spec!r} needs timm, which is not installed; pip install timm") from None
        try:
            model = timm.create_model(name, pretrained=False)
        except RuntimeError as e:
            raise SpecError(f"bad model spec {spec!r}: {e}") from e
        size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
        return LoadedModel(spec, model, (example_input((1, *size)),))
    try:
        tv = import_torchvision()
    except ImportError:
        raise SpecError(f"{spec!r} needs torchvision, which is not installed; pip install torchvision") from None
    try:
        model = tv.models.get_model(name, weights=None)
    except ValueError:
        known = tv.models.list_models(tv.models)
        raise SpecError(f"bad model spec {spec!r}: torchvision has no classification model {name!r}; "
                        f"e.g. {', '.join(known[:8])} ({len(known)} in all)") from None
    side = ZOO_INPUT_SIZE.get(name, 224)
    return LoadedModel(spec, model, (example_input((1, 3, side, side)),))


def _folder(spec: str, folder: Path) -> LoadedModel:
    from torchgraft.backends.torch.emitter import WEIGHTS, import_file

    if not (folder / "model.py").is_file():
        raise SpecError(f"bad model spec {spec!r}: the folder has no model.py; give a folder written by "
                        "torchgraft rewrite/emit, or a 'package.module:callable' spec")
    module = import_file(folder / "model.py")
    entry = "load" if (folder / WEIGHTS).is_file() else "build"
    if not callable(getattr(module, entry, None)):
        raise SpecError(f"bad model spec {spec!r}: {folder / 'model.py'} defines no {entry}(); "
                        "was it written by torchgraft?")
    model = getattr(module, entry)()
    args: tuple[Any, ...] = ()
    if (folder / EXAMPLE_INPUTS).is_file():
        from safetensors.torch import load_file

        saved = load_file(str(folder / EXAMPLE_INPUTS))
        args = tuple(saved[k] for k in sorted((k for k in saved if k.isdigit()), key=int))
    return LoadedModel(spec, model, args)


def save_example_inputs(loaded: LoadedModel, folder: str | Path) -> bool:
    """Save the positional example inputs beside an emitted model (when they are all tensors)."""
    if loaded.kwargs or not loaded.args or not all(isinstance(a, torch.Tensor) for a in loaded.args):
        return False
    from safetensors.torch import save_file

    save_file({str(i): a.detach().contiguous() for i, a in enumerate(loaded.args)},
              str(Path(folder) / EXAMPLE_INPUTS))
    return True
