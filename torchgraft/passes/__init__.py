"""Rewrite passes over the IR, a registry, and pipelines with a text form.

    result = torchgraft.passes.run(model, "swap-activation{from=relu to=silu},fuse-conv-bn")
    result.model, result.report
"""

from torchgraft.passes.base import Match, Pass, PassReport
from torchgraft.passes.fmap import fmap
from torchgraft.passes.pipeline import PassResult, PipelineError, make_pass, parse_pipeline, pipeline_text, run
from torchgraft.passes.registry import REGISTRY
from torchgraft.passes.selectors import Inside, Kind, PathGlob, Selector, Site, Where, parse_selector
from torchgraft.passes.sites import Selection, iter_sites, select

__all__ = ["REGISTRY", "Inside", "Kind", "Match", "Pass", "PassReport", "PassResult", "PathGlob", "PipelineError",
           "Selection", "Selector", "Site", "Where", "fmap", "iter_sites", "make_pass", "parse_pipeline",
           "parse_selector", "pipeline_text", "run", "select"]
