"""Composable models: an ``ir.Model`` generated from the specs of its inputs and outputs.

Each input and output has a *structure* (``point``, ``low`` or ``high``: how many positions its grid
has), a number of grid dims, and a kind (discrete tokens with a vocabulary, or continuous numbers).
``universal`` picks a part for each: ``fan-in`` (strided convolutions reduce high data),
``straight`` (attention over low data), ``embedding`` (point data), ``fan-out`` (a vector grown into
high data), ``U`` (high inputs aligned with a high output, with skip connections) and ``head``::

    import torchgraft as tg
    from torchgraft.composable import Input, Output, universal

    image = Input(("N", 3, 64, 64), name="image")
    label = Input(("N",), vocab=10, name="label")
    sound = Output(("N", 1, 4096), name="sound")
    m = universal(unaligned=[image, label], aligned=[], outputs=[sound], compute="small")
    print(m.plan)
    tg.emit(m).save("out/")        # model.py: def forward(self, image, label)

The result is an ordinary typed ``ir.Model``: every pass applies, and it emits as plain source.
``docs/composable.md`` explains the structure classes and model types.
"""

from torchgraft.composable.plan import CONFIGS, Config, Plan, PlanRow, count_params
from torchgraft.composable.spec import HIGH_AT, Input, Output, SpecError
from torchgraft.composable.spec_file import ModelSpec, SpecFileError, parse_spec, read_spec
from torchgraft.composable.universal import UniversalModel, plan_of, universal

__all__ = ["CONFIGS", "HIGH_AT", "Config", "Input", "ModelSpec", "Output", "Plan", "PlanRow", "SpecError",
           "SpecFileError", "UniversalModel", "count_params", "parse_spec", "plan_of", "read_spec", "universal"]
