"""The JSON form of the IR (structure) and safetensors files (tensors). No pickle, no eval.

Encoding rules (decoding is their exact inverse, driven by explicit tag tables):

* an IR class (``Conv``, ``Chain``, ``Graph``, ``TensorType``, ``Model``, ...) is an object
  ``{"node": "<ClassName>", <field>: <value>, ...}`` holding its dataclass fields;
* an enum member is ``{"enum": "ActKind", "member": "RELU"}``;
* a JSON array is always a Python ``tuple``; a ``list`` is ``{"py": "list", "items": [...]}``;
* ``None``, ``bool``, ``int``, finite ``float`` and ``str`` are JSON scalars (Python's
  ``json`` keeps ``1``, ``1.0`` and ``true`` apart); ``inf``/``nan`` are
  ``{"py": "float", "repr": "inf"}``;
* other constants are tagged ``{"py": <kind>, ...}``: ``complex``, ``ellipsis``, ``dtype``,
  ``device``, ``memory_format``, ``layout``, ``dict``.

Decoding never imports or calls anything named in the text: tags are looked up in the
tables below, torch dtypes/layouts/memory formats in tables built from the ``torch``
module, and function names (``FunctionCall.qualname``) stay strings. An unknown tag
is an ``IRError``. The output is deterministic: keys sorted, fixed indentation.
"""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch

from torchgraft.errors import IRError
from torchgraft.ir.activations import ActKind, Spelling
from torchgraft.ir.attr_values import ATTR_VALUE_CLASSES
from torchgraft.ir.extra_state import StateMethods
from torchgraft.ir.graph import (
    ChildCall,
    FunctionCall,
    GetAttr,
    Graph,
    Guard,
    Input,
    InputKind,
    MethodCall,
    Op,
    PrimCall,
)
from torchgraft.ir.model import Helper, HelperKind, Model
from torchgraft.ir.nodes import (
    Block,
    Chain,
    ChildRef,
    ClassRef,
    Combine,
    CombineKind,
    Container,
    Opaque,
    Parallel,
    PySource,
    SkipConnection,
    StateSpec,
)
from torchgraft.ir.primitives import PRIMITIVE_CLASSES
from torchgraft.ir.reparam import Reparam
from torchgraft.ir.types import ScalarType, TensorType
from torchgraft.ir.values import ByMode, Const, DictArg, Ref, Seq, Slice, Training

FORMAT = "torchgraft-ir"
VERSION = 1
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
CONSTANTS_FILE = "constants.safetensors"

_CLASSES: tuple[type, ...] = (
    *PRIMITIVE_CLASSES, Chain, Parallel, SkipConnection, Combine, Block, Container, Opaque, ChildRef, ClassRef,
    PySource, Reparam, StateMethods,
    StateSpec, Graph, Op, Input, ChildCall, FunctionCall, MethodCall, GetAttr, PrimCall, Guard,
    Ref, Const, Seq, Slice, DictArg, Training, ByMode, TensorType, ScalarType, Model, Helper, *ATTR_VALUE_CLASSES)
NODE_TAGS: dict[str, type] = {c.__name__: c for c in _CLASSES}
"""Tag → IR class: the only classes the decoder constructs."""

ENUM_TAGS: dict[str, type[enum.Enum]] = {c.__name__: c for c in (ActKind, Spelling, InputKind, CombineKind,
                                                                 HelperKind)}
"""Tag → enum class."""

MAX_DEPTH = 500
"""Deepest nesting of JSON arrays and objects ``from_json`` reads (a 200-deep ``nn.Sequential`` is about 404)."""

_SKIPPED_FIELDS: dict[type, tuple[str, ...]] = {Model: ("weights", "report", "constants")}
"""Fields not in the JSON: tensors go to safetensors files, the capture report is not kept."""

_OMITTED_WHEN_EMPTY: dict[type, tuple[str, ...]] = {Op: ("source_var",)}
"""Optional fields written only when set (a naming hint), so documents without them stay as they were."""


def _torch_table(kind: type) -> dict[str, Any]:
    return {str(v): v for v in vars(torch).values() if isinstance(v, kind)}


_DTYPES = _torch_table(torch.dtype)
_LAYOUTS = _torch_table(torch.layout)
_MEMORY_FORMATS = _torch_table(torch.memory_format)


# ---------------------------------------------------------------------------------------------- encoding

def _encode_float(v: float) -> Any:
    return v if math.isfinite(v) else {"py": "float", "repr": repr(v)}


def _encode_node(obj: Any) -> dict[str, Any]:
    cls = type(obj)
    if cls is Chain:
        chain = {"node": "Chain", "items": [_encode(i) for i in obj.items], "names": list(obj.names)}
        return chain if obj.cls is None else {**chain, "cls": _encode(obj.cls)}  # an nn.Sequential subclass
    out: dict[str, Any] = {"node": cls.__name__}
    skip = _SKIPPED_FIELDS.get(cls, ())
    empty = _OMITTED_WHEN_EMPTY.get(cls, ())
    for f in fields(obj):
        if f.name not in skip and not (f.name in empty and getattr(obj, f.name) == f.default):
            out[f.name] = _encode(getattr(obj, f.name))
    return out


def _encode_special(v: Any) -> dict[str, Any]:
    if isinstance(v, list):
        return {"py": "list", "items": [_encode(i) for i in v]}
    if isinstance(v, complex):
        return {"py": "complex", "real": _encode_float(v.real), "imag": _encode_float(v.imag)}
    if v is Ellipsis:
        return {"py": "ellipsis"}
    if isinstance(v, torch.dtype):
        return {"py": "dtype", "name": str(v)}
    if isinstance(v, torch.device):
        return {"py": "device", "name": str(v)}
    if isinstance(v, torch.memory_format):
        return {"py": "memory_format", "name": str(v)}
    if isinstance(v, torch.layout):
        return {"py": "layout", "name": str(v)}
    if isinstance(v, dict):
        return {"py": "dict", "items": [[_encode(k), _encode(x)] for k, x in v.items()]}
    raise IRError(f"cannot serialise a value of type {type(v).__name__} ({v!r}); the IR's JSON form holds "
                  "IR nodes, None/bool/int/float/str, tuples, lists, dicts and torch dtype/device/layout/format")


def _encode(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return _encode_float(float(v))
    if isinstance(v, tuple):
        return [_encode(i) for i in v]
    if type(v).__name__ in NODE_TAGS and NODE_TAGS[type(v).__name__] is type(v):
        return _encode_node(v)
    if isinstance(v, enum.Enum) and ENUM_TAGS.get(type(v).__name__) is type(v):
        return {"enum": type(v).__name__, "member": v.name}
    if is_dataclass(v) or isinstance(v, Chain):
        raise IRError(f"cannot serialise {type(v).__qualname__}: it is not one of the IR classes "
                      f"({', '.join(sorted(NODE_TAGS))})")
    return _encode_special(v)


def to_dict(model: Model) -> dict[str, Any]:
    """The JSON-ready dict of ``model`` (what ``to_json`` writes)."""
    if not isinstance(model, Model):
        raise IRError(f"to_json needs an ir.Model, got {type(model).__name__}")
    try:
        return {"format": FORMAT, "version": VERSION, "model": _encode(model)}
    except RecursionError:
        raise _too_deep(f"deeper than Python's recursion limit of {sys.getrecursionlimit()} allows") from None


def to_json(model: Model) -> str:
    """The model's structure as deterministic JSON text (weights are not included; see ``save``)."""
    doc = to_dict(model)
    try:
        return json.dumps(doc, sort_keys=True, indent=1, allow_nan=False)
    except RecursionError:
        raise _too_deep(f"deeper than Python's recursion limit of {sys.getrecursionlimit()} allows") from None


# ---------------------------------------------------------------------------------------------- decoding

def _keys(obj: dict[str, Any], expected: set[str], what: str) -> None:
    if set(obj) != expected:
        raise IRError(f"bad JSON for {what}: keys {sorted(obj)}, expected {sorted(expected)}")


def _decode_float(v: Any) -> float:
    if isinstance(v, dict):
        _keys(v, {"py", "repr"}, "float")
        if v["py"] != "float" or v["repr"] not in ("inf", "-inf", "nan"):
            raise IRError(f"bad JSON float {v!r}; expected a number or inf/-inf/nan")
        return float(v["repr"])
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise IRError(f"bad JSON float {v!r}")
    return float(v)


def _named(table: dict[str, Any], kind: str) -> Callable[[dict[str, Any]], Any]:
    def get(obj: dict[str, Any]) -> Any:
        _keys(obj, {"py", "name"}, kind)
        if obj["name"] not in table:
            raise IRError(f"unknown torch {kind} {obj['name']!r} in JSON")
        return table[obj["name"]]
    return get


def _device(obj: dict[str, Any]) -> torch.device:
    _keys(obj, {"py", "name"}, "device")
    try:
        return torch.device(str(obj["name"]))
    except (RuntimeError, ValueError) as e:
        raise IRError(f"bad device {obj['name']!r} in JSON: {e}") from None


def _items(obj: dict[str, Any], what: str) -> list[Any]:
    _keys(obj, {"py", "items"}, what)
    if not isinstance(obj["items"], list):
        raise IRError(f"bad JSON {what}: 'items' must be an array")
    return obj["items"]


def _complex(obj: dict[str, Any]) -> complex:
    _keys(obj, {"py", "real", "imag"}, "complex")
    return complex(_decode_float(obj["real"]), _decode_float(obj["imag"]))


def _ellipsis(obj: dict[str, Any]) -> Any:
    _keys(obj, {"py"}, "ellipsis")
    return Ellipsis


def _pairs(obj: dict[str, Any]) -> dict[Any, Any]:
    items = _items(obj, "dict")
    if not all(isinstance(p, list) and len(p) == 2 for p in items):
        raise IRError("bad JSON dict: items must be [key, value] pairs")
    return {_decode(k): _decode(v) for k, v in items}


_SPECIAL: dict[str, Callable[[dict[str, Any]], Any]] = {
    "list": lambda o: [_decode(i) for i in _items(o, "list")],
    "dict": _pairs,
    "float": _decode_float,
    "complex": _complex,
    "ellipsis": _ellipsis,
    "dtype": _named(_DTYPES, "dtype"),
    "layout": _named(_LAYOUTS, "layout"),
    "memory_format": _named(_MEMORY_FORMATS, "memory_format"),
    "device": _device,
}


def _decode_node(obj: dict[str, Any]) -> Any:
    tag = obj["node"]
    cls = NODE_TAGS.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise IRError(f"unknown node tag {tag!r} in JSON; known: {', '.join(sorted(NODE_TAGS))}")
    if cls is Chain:
        _keys(obj, {"node", "items", "names"} | ({"cls"} if "cls" in obj else set()), "Chain")
        return Chain(*_decode(obj["items"]), names=_decode(obj["names"]), cls=_decode(obj.get("cls")))
    skip = _SKIPPED_FIELDS.get(cls, ())
    known = {f.name for f in fields(cls) if f.name not in skip}
    unknown = set(obj) - known - {"node"}
    if unknown:
        raise IRError(f"JSON for {tag} has unknown fields {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {k: _decode(v) for k, v in obj.items() if k != "node"}
    try:
        return cls(**kwargs)
    except IRError as e:
        raise IRError(f"invalid {tag} in JSON: {e}") from e
    except TypeError as e:
        raise IRError(f"invalid {tag} in JSON: {e}") from None


def _decode_enum(obj: dict[str, Any]) -> Any:
    _keys(obj, {"enum", "member"}, "enum")
    cls = ENUM_TAGS.get(obj["enum"]) if isinstance(obj["enum"], str) else None
    if cls is None:
        raise IRError(f"unknown enum tag {obj['enum']!r} in JSON; known: {', '.join(sorted(ENUM_TAGS))}")
    member = obj["member"]
    if not isinstance(member, str) or member not in cls.__members__:
        raise IRError(f"{cls.__name__} has no member {member!r}; known: {', '.join(cls.__members__)}")
    return cls.__members__[member]


def _decode(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return tuple(_decode(i) for i in v)
    if not isinstance(v, dict):
        raise IRError(f"unexpected JSON value {v!r}")
    if "node" in v:
        return _decode_node(v)
    if "enum" in v:
        return _decode_enum(v)
    kind = v.get("py")
    if isinstance(kind, str) and kind in _SPECIAL:
        return _SPECIAL[kind](v)
    raise IRError(f"JSON object without a known tag: {json.dumps(v)[:120]}; objects must carry "
                  f"'node' (one of the IR classes), 'enum', or 'py' (one of {', '.join(sorted(_SPECIAL))})")


def _too_deep(detail: str) -> IRError:
    return IRError(f"torchgraft IR JSON is nested too deeply ({detail}); the limit is {MAX_DEPTH} levels of "
                   "arrays and objects. A model nested that deeply cannot be read back: flatten its nesting "
                   "(e.g. one nn.Sequential holding the layers) before saving it.")


def _check_depth(doc: Any) -> None:
    """Raise ``IRError`` when ``doc`` nests arrays/objects more than ``MAX_DEPTH`` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(f"more than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack += [(c, depth + 1) for c in children if isinstance(c, (dict, list))]


def from_dict(doc: Any) -> Model:
    """The model encoded in ``doc`` (the parsed form of ``to_json``'s text).

    A document nested more than ``MAX_DEPTH`` levels deep is an ``IRError``.
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IRError(f"not a torchgraft IR document: expected an object with format={FORMAT!r}")
    if doc.get("version") != VERSION:
        raise IRError(f"torchgraft IR version {doc.get('version')!r} is not supported (this library reads "
                      f"version {VERSION})")
    _check_depth(doc)
    try:
        model = _decode(doc.get("model"))
    except RecursionError:
        raise _too_deep(f"deeper than Python's recursion limit of {sys.getrecursionlimit()} allows here") from None
    if not isinstance(model, Model):
        raise IRError(f"the document's 'model' is a {type(model).__name__}, not a Model")
    return model


def from_json(text: str) -> Model:
    """The model written by ``to_json`` (weights empty; see ``load``); nested more than ``MAX_DEPTH``
    levels deep, an ``IRError``.

    The text is untrusted input: decoding imports and calls nothing, but ``emit`` writes parts of the
    model as code, so run ``verify`` before emitting (it refuses functions outside the allow-list,
    names that are not identifiers and Opaque classes that are not module classes). Copied source
    (``PySource`` bodies, ``Model.helpers``, ``StateMethods``) is code that the emitted ``model.py``
    runs on import or build; it cannot be checked, so only emit a file holding it when you trust it.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise IRError(f"torchgraft IR JSON does not parse: {e}") from None
    except RecursionError:
        raise _too_deep(f"deeper than Python's recursion limit of {sys.getrecursionlimit()} allows") from None
    return from_dict(doc)


# ---------------------------------------------------------------------------------------------- files

def _unshared(tensors: Any) -> dict[str, torch.Tensor]:
    """Detached, contiguous tensors; any that share storage with an earlier one are cloned."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise IRError(f"state {key!r} is a {type(value).__name__}, not a tensor; cannot save it")
        t = value.detach()
        ptr = (t.device.type, t.untyped_storage().data_ptr())
        if ptr in seen or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add((t.device.type, t.untyped_storage().data_ptr()))
        out[key] = t
    return out


def _save_tensors(tensors: Any, path: Path) -> None:
    from safetensors.torch import save_file

    data = _unshared(tensors)
    save_file(data, str(path), metadata={"format": "pt", "torchgraft.keys": json.dumps(list(data))})


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        order = json.loads((f.metadata() or {}).get("torchgraft.keys", "[]"))
        keys = set(f.keys())
        ordered = [k for k in order if k in keys] + sorted(keys - set(order))
        return {k: f.get_tensor(k) for k in ordered}


def save(model: Model, directory: str | Path) -> Path:
    """Write ``model.json``, ``weights.safetensors`` and (if any) ``constants.safetensors``.

    Tensors that share storage (tied weights) are written as separate copies, as
    safetensors requires; ``load`` gives them back under every key. Returns the directory.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_text(to_json(model) + "\n", encoding="utf-8")
    _save_tensors(model.weights, folder / WEIGHTS_FILE)
    if model.constants:
        _save_tensors(model.constants, folder / CONSTANTS_FILE)
    elif (folder / CONSTANTS_FILE).exists():
        (folder / CONSTANTS_FILE).unlink()
    return folder


def load(directory: str | Path) -> Model:
    """The model saved by ``save`` in ``directory``, with its weights and constants."""
    folder = Path(directory)
    if not (folder / MODEL_FILE).is_file():
        raise IRError(f"{folder} has no {MODEL_FILE}; save a model there with torchgraft.ir.serialize.save")
    model = from_json((folder / MODEL_FILE).read_text(encoding="utf-8"))
    weights = _load_tensors(folder / WEIGHTS_FILE) if (folder / WEIGHTS_FILE).is_file() else {}
    constants = _load_tensors(folder / CONSTANTS_FILE) if (folder / CONSTANTS_FILE).is_file() else {}
    return replace(model, weights=weights, constants=constants)
