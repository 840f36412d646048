"""A Block's extra state: the ``get_extra_state``/``set_extra_state`` its class defines, copied.

torch saves what ``get_extra_state()`` returns under the key ``<path>._extra_state`` and hands it
to ``set_extra_state`` on load; strict loading demands the key whenever the class overrides
``set_extra_state``. The emitted class therefore carries both methods as the original wrote them
(``source``), with the plain attributes they read set in ``__init__`` (``attrs``). A tensor extra
state travels in the weights (``Model.weights``); any other value in ``Model.extra_state``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchgraft.errors import IRError
from torchgraft.ir.attr_values import AttrValue

EXTRA_STATE_KEY = "_extra_state"
"""The state_dict key suffix torch uses (``torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX``)."""


@dataclass(frozen=True, slots=True)
class StateMethods:
    """The copied source of ``get_extra_state`` and/or ``set_extra_state`` (and methods they call),
    and the constant attributes they read."""

    source: str
    attrs: tuple[tuple[str, AttrValue], ...] = ()

    def __post_init__(self) -> None:
        if "def get_extra_state(" not in self.source and "def set_extra_state(" not in self.source:
            raise IRError("StateMethods must define get_extra_state or set_extra_state")
        for name, _ in self.attrs:
            if not name.isidentifier():
                raise IRError(f"StateMethods attribute name {name!r} is not an identifier")
