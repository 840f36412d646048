"""Moved to ``torchgraft.ir.interpret`` (the IR's interpreter needs no tracing): re-exported here for the
importers that still name this module.

>>> from torchgraft.ir.interpret import Interpreter   # doctest: +SKIP
"""

from torchgraft.ir.interpret import Interpreter, call_prim, child_node, typed_block

__all__ = ["Interpreter", "call_prim", "child_node", "typed_block"]
