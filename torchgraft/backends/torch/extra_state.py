"""Extra state that is not a tensor (a ``get_extra_state`` returning a dict): kept as JSON in the
metadata of ``weights.safetensors``, under ``"extra_state"``, and read back by the emitted ``load()``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

METADATA_KEY = "extra_state"
"""The safetensors metadata entry holding ``{state_dict key: value}`` as JSON."""


def metadata(extra_state: Mapping[str, Any]) -> dict[str, str] | None:
    """The safetensors metadata for ``extra_state`` (None when there is none)."""
    return {METADATA_KEY: json.dumps(dict(extra_state), sort_keys=True)} if extra_state else None


def load_lines(root_name: str, weights_file: str) -> list[str]:
    """The emitted ``load()`` that also reads the JSON extra state from the weights file's metadata."""
    return [f"def load(weights: str | Path | None = None) -> {root_name}:\n",
            '    """The model with weights loaded strict=True (default: the file beside this one)."""\n',
            "    from safetensors import safe_open\n",
            "    from safetensors.torch import load_file\n\n",
            "    model = build()\n",
            f'    weights = weights or Path(__file__).with_name("{weights_file}")\n',
            "    state: dict = load_file(weights)\n",
            "    # extra state that is not a tensor, kept as JSON\n",
            '    with safe_open(str(weights), "pt") as f:\n',
            f'        state.update(json.loads((f.metadata() or {{}}).get("{METADATA_KEY}", "{{}}")))\n',
            "    model.load_state_dict(state, strict=True)\n",
            "    return model\n"]
