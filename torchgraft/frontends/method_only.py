"""Modules without a ``forward`` of their own: their parent calls another method (``self.helper.score(a, b)``).

torch.fx inlines such a call into the parent's graph: the child's parameters become attribute
reads of the parent (``self.helper.w``), its child modules calls of the parent
(``self.helper.proj(x)``). The child itself only has to hold its state under the same keys. Its
Block keeps a ``forward`` that raises as ``nn.Module``'s does, and, where they can be copied, its
class's other methods (so a parent whose forward is kept as copied source can still call them).
"""

from __future__ import annotations

import types

from torch import nn

from torchgraft.frontends.fx_block import TraceError
from torchgraft.frontends.source_copy import copy_methods
from torchgraft.ir.model import Helper
from torchgraft.ir.nodes import PySource

NO_FORWARD = '''def forward(self, *args, **kwargs):
    raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')
'''
"""The emitted forward of a module that has none: what ``nn.Module.forward`` does."""

_LEFT_OUT = frozenset({"get_extra_state", "set_extra_state", "extra_repr", "reset_parameters"})
"""Methods not copied here (extra state is copied by ``frontends.extra_state``)."""


def has_no_forward(mod: nn.Module) -> bool:
    """Whether ``mod``'s class defines no ``forward`` (calling the module raises NotImplementedError)."""
    return type(mod).forward is nn.Module.forward


def _own_methods(cls: type) -> tuple[str, ...]:
    """Plain methods the class (and its bases below nn.Module) defines, dunder methods left out."""
    names: dict[str, None] = {}
    for base in cls.__mro__:
        if base in (nn.Module, object):
            break
        names.update({n: None for n, v in vars(base).items() if isinstance(v, types.FunctionType)
                      and not n.startswith("__") and n not in _LEFT_OUT})
    return tuple(sorted(names))


def no_forward_body(mod: nn.Module, helpers: dict[str, Helper]) -> tuple[PySource, str]:
    """The source body of a module without forward, and the capture report's note."""
    methods = _own_methods(type(mod))
    if not methods:
        return PySource(NO_FORWARD), "it has no forward: its parent reads its state or calls its children"
    try:
        source, attrs = copy_methods(mod, helpers, methods)
    except TraceError as e:
        return PySource(NO_FORWARD), (f"it has no forward: its parent calls its methods ({', '.join(methods)}), "
                                      f"which a trace of the parent inlines (they could not be copied: {e})")
    return (PySource(NO_FORWARD + "\n" + source, attrs),
            f"it has no forward: its parent calls its methods ({', '.join(methods)}), which a trace of the parent "
            "inlines; they were copied too")
