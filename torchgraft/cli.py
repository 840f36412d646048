"""The ``torchgraft`` command (also ``python -m torchgraft``).

::

    torchgraft inspect torchvision:resnet18 --depth 2
    torchgraft rewrite mypkg.models:build -p "swap-activation{from=relu to=silu},fuse-conv-bn" -o out/ --check
    torchgraft graph torchvision:resnet18 --format svg -o resnet18.svg
    torchgraft diff mypkg.models:build -p fuse-conv-bn --format html -o diff.html
    torchgraft passes
    torchgraft demo
    torchgraft new torchgraft/examples/animal_sound.toml -o out/animal

A SPEC names a model (see ``torchgraft.specs``): ``package.module:callable``,
``torchvision:NAME``, ``timm:NAME`` or a folder torchgraft emitted. Errors print one
line, ``torchgraft: error: ...``, naming the problem and the fix, and exit with status
2 (1 when ``rewrite --check`` finds outputs that differ, on the example inputs or on a
probe beyond them: see ``--probes``); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect as pyinspect
import sys
from pathlib import Path
from typing import Any, NoReturn

from torchgraft.errors import CaptureError, TorchgraftError

EXIT_ERROR = 2
EXIT_CHECK_FAILED = 1
FORMATS = ("dot", "mermaid", "svg", "png", "html")


class UsageError(TorchgraftError):
    """The command line itself is wrong (unknown option, missing argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors become one line: ``torchgraft: error: ...; see --help``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


# building the parser ---------------------------------------------------------------------------

def _debug_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback on errors")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC",
                        help="package.module:callable, torchvision:NAME, timm:NAME or a folder torchgraft emitted")
    parser.add_argument("--input", action="append", metavar="SHAPE", default=None,
                        help="example input shape such as 1x3x224x224 (repeat for several inputs); "
                             "replaces the spec's own inputs")
    parser.add_argument("--dtype", default="float32", help="dtype of the --input tensors (default: float32)")


def _depth_option(parser: argparse.ArgumentParser, default: int | None, what: str) -> None:
    parser.add_argument("--depth", type=int, default=default, metavar="N", help=what)


def _add(sub: Any, name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description or help_text)
    _debug_option(parser, argparse.SUPPRESS)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``torchgraft`` command."""
    from torchgraft import __version__

    parser = _Parser(prog="torchgraft", description="Model surgery for PyTorch: capture a model into a typed, "
                     "hierarchical IR, rewrite it, and emit readable PyTorch source plus weights.",
                     epilog="Run 'torchgraft COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"torchgraft {__version__}")
    _debug_option(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _inspect_parser(sub)
    _rewrite_parser(sub)
    _graph_parser(sub)
    _diff_parser(sub)
    _new_parser(sub)
    _add(sub, "passes", "list every registered pass with its options")
    demo = _add(sub, "demo", "capture -> rewrite -> emit -> reload on the bundled model (no download)")
    demo.add_argument("-o", "--out", help="folder for model.py and weights (default: a temp folder)")
    demo.add_argument("--quiet", action="store_true", help="do not print the emitted source")
    return parser


def _inspect_parser(sub: Any) -> None:
    p = _add(sub, "inspect", "a torchinfo-like table: path, kind, output type, parameters; and the capture report")
    _model_options(p)
    _depth_option(p, 3, "module levels to show (default 3; 0 shows the model only)")
    p.add_argument("--all", action="store_true", help="show every level (same as a very large --depth)")


def _rewrite_parser(sub: Any) -> None:
    p = _add(sub, "rewrite", "run a pipeline, print its report, emit DIR/model.py + weights",
             "Run a pass pipeline, print the change report and write DIR/model.py, DIR/weights.safetensors "
             "(and the example inputs, so DIR is itself a SPEC).")
    _model_options(p)
    p.add_argument("-p", "--pipeline", default="", help='e.g. "swap-activation{from=relu to=silu},fuse-conv-bn" '
                   "(default: none, the model is emitted as is)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder to write model.py and weights to")
    p.add_argument("--strict", action="store_true",
                   help="fail when a pass's where= selector selects nothing (default: a warning)")
    p.add_argument("--check", action="store_true",
                   help="compare the emitted model with the original on the example inputs and beyond them: "
                        "batch 1 and batch+1, token inputs 3 longer, right/left-padded masks, three calls in a "
                        "row; a probe the original cannot run is skipped, one the emitted model refuses with a "
                        "ValueError (a run-time guard) is listed without failing")
    p.add_argument("--modes", default="eval", help="modes --check runs, comma-separated: eval, train "
                   "(default: eval; fuse-conv-bn and remove-dropout make inference models)")
    p.add_argument("--probes", default="all", metavar="LIST",
                   help="what --check runs, comma-separated: example, batch, length, padding, repeat "
                        "(default: all; 'example' compares on the example inputs only)")


def _graph_parser(sub: Any) -> None:
    p = _add(sub, "graph", "a picture of the IR: DOT, Mermaid, SVG/PNG (needs Graphviz) or HTML")
    _model_options(p)
    p.add_argument("--format", "-f", choices=FORMATS, default="dot", help="output format (default: dot)")
    _depth_option(p, None, "draw Blocks/Chains deeper than N as single boxes (default: everything)")
    p.add_argument("-o", "--out", metavar="FILE", help="write to FILE instead of standard output")


def _diff_parser(sub: Any) -> None:
    p = _add(sub, "diff", "before/after a pipeline: text diff, or a picture with the changes highlighted")
    _model_options(p)
    p.add_argument("-p", "--pipeline", required=True, help="the passes to compare against")
    p.add_argument("--format", "-f", choices=("text",) + FORMATS, default="text", help="output format (default: text)")
    _depth_option(p, None, "draw Blocks/Chains deeper than N as single boxes (pictures only)")
    p.add_argument("-o", "--out", metavar="FILE", help="write to FILE instead of standard output")


def _new_parser(sub: Any) -> None:
    p = _add(sub, "new", "build a model from a TOML file of its inputs and outputs; print its plan; emit DIR",
             "Build a composable model from a TOML spec file (its inputs and outputs, as "
             "torchgraft.composable.universal takes them; see docs/composable.md and the bundled "
             "torchgraft/examples/animal_sound.toml), print its plan and write DIR/model.py, "
             "DIR/weights.safetensors and example inputs (so DIR is itself a SPEC).")
    p.add_argument("spec_file", metavar="SPEC.toml", help="the spec file: [[unaligned]], [[aligned]] and "
                   "[[outputs]] tables with name, shape, dtype, vocab, ...; top-level name, compute, seed")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder to write model.py and weights to")


# running ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Entry point of ``torchgraft`` and ``python -m torchgraft``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    except KeyboardInterrupt:
        print("torchgraft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line unless --debug
        if debug:
            raise
        print(f"torchgraft: error: {error_message(e)}", file=sys.stderr)
        return EXIT_ERROR


def error_message(e: BaseException) -> str:
    """One line naming the problem and the fix."""
    from torchgraft.passes import PipelineError

    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, PipelineError):
        return f"{text}; run 'torchgraft passes' to see every pass and its options"
    if isinstance(e, CaptureError):
        return f"{text} (give other example inputs with --input SHAPE)"
    if isinstance(e, TorchgraftError):
        return text
    if isinstance(e, OSError):
        return f"{text}; check the path and its permissions"
    return f"unexpected {type(e).__name__}: {text}; rerun with --debug for the traceback, and please report it"


def _dispatch(args: argparse.Namespace) -> int:
    commands = {"inspect": cmd_inspect, "rewrite": cmd_rewrite, "graph": cmd_graph, "diff": cmd_diff,
                "passes": cmd_passes, "demo": cmd_demo, "new": cmd_new}
    return commands[args.command](args)


def _load(args: argparse.Namespace) -> Any:
    from torchgraft.progress import step
    from torchgraft.specs import load_spec, require_inputs

    with step(f"loading {args.spec}"):
        return require_inputs(load_spec(args.spec, args.input, args.dtype))


def _capture(loaded: Any) -> Any:
    from torchgraft.frontends.capture import capture
    from torchgraft.progress import step

    with step("capturing"):
        return capture(loaded.module, loaded.args, loaded.kwargs)


def _run_pipeline(model: Any, passes: list[Any], strict: bool = False) -> Any:
    from torchgraft.passes import run
    from torchgraft.progress import step

    with step("running passes"):
        try:
            return run(model, passes, strict=strict)
        except ValueError as e:  # passes check option values as they run (e.g. an unknown activation)
            if isinstance(e, TorchgraftError):
                raise
            raise UsageError(f"{' '.join(str(e).split())}; check the pass options with 'torchgraft passes'") from e


def cmd_inspect(args: argparse.Namespace) -> int:
    """``torchgraft inspect``: the summary table and the capture report."""
    model = _capture(_load(args))
    print(summary_table(model, None if args.all else args.depth))
    if model.report is not None:
        print()
        print(model.report.summary())
    return 0


def cmd_rewrite(args: argparse.Namespace) -> int:
    """``torchgraft rewrite``: pipeline, report, emitted folder, optional check."""
    from torchgraft.passes import parse_pipeline

    passes = parse_pipeline(args.pipeline)  # fail on a bad pipeline before the slow capture
    modes, probes = _modes(args.modes), _probes(args.probes)
    loaded = _load(args)
    result = _run_pipeline(_capture(loaded), passes, args.strict)
    if result.reports:
        print(result.report)
    _save(result.model, loaded, Path(args.out))
    if not args.check:
        return 0
    return _check(loaded, Path(args.out), passes, modes, probes)


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in ("eval", "train")]
    if bad or not modes:
        raise UsageError(f"--modes {text!r}: use eval, train or eval,train")
    return modes


def _probes(text: str) -> tuple[str, ...]:
    from torchgraft.probes import PROBE_KINDS, probe_kinds

    try:
        return probe_kinds(text)
    except ValueError:
        kinds = ", ".join(PROBE_KINDS)
        raise UsageError(f"--probes {text!r}: use all, or any of {kinds} separated by commas") from None


def _save(model: Any, loaded: Any, out: Path) -> None:
    from torchgraft.backends.torch.emitter import emit
    from torchgraft.progress import step
    from torchgraft.specs import save_example_inputs

    with step("emitting"):
        code = emit(model)
    with step(f"saving {out}"):
        code.save(out)
        inputs = save_example_inputs(loaded, out)
    files = ["model.py"] + [f.name for f in sorted(out.glob("*.safetensors"))]
    print(f"wrote {out}/: {', '.join(files)} ({len(code.source.splitlines())} lines of source)")
    if inputs:
        print(f"  {out} is itself a SPEC now: torchgraft inspect {out}")


def _check(loaded: Any, out: Path, passes: list[Any], modes: tuple[str, ...], probes: tuple[str, ...]) -> int:
    from torchgraft.check import check
    from torchgraft.progress import step
    from torchgraft.specs import load_spec

    with step("checking"):
        emitted = load_spec(str(out)).module
        report = check(loaded.module, emitted, loaded.args, loaded.kwargs, modes=modes, probes=probes)
    print(report)
    changing = [p.name for p in passes if not type(p).keeps_semantics]
    if changing:
        print(f"note: {', '.join(changing)} change(s) what the model computes, so differences are expected "
              "and do not fail the check")
        return 0
    return 0 if report.ok else EXIT_CHECK_FAILED


def cmd_graph(args: argparse.Namespace) -> int:
    """``torchgraft graph``: a picture of the IR."""
    from torchgraft.backends import graph

    model = _capture(_load(args))
    with step_for(args.format):
        if args.format in ("svg", "png"):
            data: str | bytes = graph.render(graph.to_dot(model, args.depth), args.format)
        elif args.format == "html":
            data = graph.to_html(model, args.depth)
        else:
            data = (graph.to_mermaid if args.format == "mermaid" else graph.to_dot)(model, args.depth)
    return _write(data, args.out)


def step_for(fmt: str) -> Any:
    """The progress display for drawing in ``fmt``."""
    from torchgraft.progress import step

    return step(f"drawing {fmt}")


def cmd_diff(args: argparse.Namespace) -> int:
    """``torchgraft diff``: before/after a pipeline."""
    from torchgraft.diff import diff_models
    from torchgraft.passes import parse_pipeline

    passes = parse_pipeline(args.pipeline)
    before = _capture(_load(args))
    d = diff_models(before, _run_pipeline(before, passes).model)
    if args.format == "text":
        return _write(d.summary() + ("\n\n" + d.text if d.text else "") + "\n", args.out)
    with step_for(args.format):
        if args.format in ("svg", "png"):
            from torchgraft.backends.graph import render

            data: str | bytes = render(d.to_dot(args.depth), args.format)
        else:
            data = {"dot": d.to_dot, "mermaid": d.to_mermaid, "html": d.to_html}[args.format](args.depth)
    return _write(data, args.out)


def _write(data: str | bytes, out: str | None) -> int:
    if out is None:
        if isinstance(data, bytes):
            if sys.stdout.isatty():
                raise UsageError("this format is binary; write it to a file with -o FILE")
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data)
        return 0
    path = Path(out)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    print(f"wrote {path}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    """``torchgraft passes``: every registered pass, its options and what it does."""
    from torchgraft.passes import REGISTRY

    print(passes_text(REGISTRY))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``torchgraft demo``: the README's main job on the bundled model."""
    from torchgraft.demo import run

    diff = run(args.out, show_source=not args.quiet)
    return 0 if diff <= 1e-4 else EXIT_CHECK_FAILED


def cmd_new(args: argparse.Namespace) -> int:
    """``torchgraft new``: a composable model from a spec file: plan, DIR/model.py, weights, example inputs."""
    from safetensors.torch import save_file

    from torchgraft.backends.torch.emitter import emit
    from torchgraft.composable.spec_file import read_spec
    from torchgraft.progress import step
    from torchgraft.specs import EXAMPLE_INPUTS

    spec = read_spec(args.spec_file)
    with step(f"building {spec.name}"):
        model = spec.build()
    print(model.plan)
    out = Path(args.out)
    with step(f"saving {out}"):
        code = emit(model)
        code.save(out)
        save_file({str(i): x for i, x in enumerate(spec.example_inputs())}, str(out / EXAMPLE_INPUTS))
    inputs = ", ".join(i.name for i in model.inputs)
    print(f"wrote {out}/: model.py, weights.safetensors, {EXAMPLE_INPUTS} ({len(code.source.splitlines())} lines "
          f"of source)\n  {spec.name}.forward({inputs}) -> {model.output_type}\n"
          f"  {out} is itself a SPEC now: torchgraft inspect {out}")
    return 0


# text helpers ----------------------------------------------------------------------------------

def _first_paragraph(doc: str | None) -> str:
    para = (doc or "").strip().split("\n\n")[0]
    return " ".join(para.replace("``", "`").split())


def pass_options(cls: type) -> list[str]:
    """``name: type = default`` for every option of a pass class (``from_`` shown as ``from``)."""
    from torchgraft.passes.pipeline import option_name

    out = []
    for f in dataclasses.fields(cls):
        name = option_name(f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if f.default is not dataclasses.MISSING:
            out.append(f"{name}: {kind} = {f.default!r}")
        elif f.default_factory is not dataclasses.MISSING:
            out.append(f"{name}: {kind} = {getattr(f.default_factory, '__name__', 'factory')}()")
        else:
            out.append(f"{name}: {kind} (required)")
    return out


def passes_text(registry: dict[str, type]) -> str:
    """The listing printed by ``torchgraft passes``."""
    import textwrap

    blocks = []
    for name, cls in registry.items():
        note = "" if getattr(cls, "keeps_semantics", True) else "  [changes outputs]"
        lines = [f"{name}{note}"]
        lines += textwrap.wrap(_first_paragraph(pyinspect.getdoc(cls)), 96, initial_indent="    ",
                               subsequent_indent="    ")
        opts = pass_options(cls)
        lines.append("    options: " + (", ".join(opts) if opts else "none"))
        blocks.append("\n".join(lines))
    usage = 'Use as: torchgraft rewrite SPEC -p "name{key=value key=value},name2" -o DIR'
    return "\n\n".join(blocks) + "\n\n" + usage


def _fmt_params(n: int) -> str:
    return f"{n:,}" if n else "--"


def _level(path: str) -> int:
    return 0 if not path else path.count(".") + 1


def summary_rows(model: Any, depth: int | None = 3) -> list[tuple[str, str, str, str]]:
    """(indented path, kind, output type, params) for every module down to ``depth`` levels."""
    from torchgraft.backends.graph import param_counts, printable, short
    from torchgraft.ir.printer import kind_label
    from torchgraft.ir.traverse import walk
    from torchgraft.ir.types import UNKNOWN

    params = param_counts(model)
    rows = []
    for path, node in walk(model.root):
        if depth is None or _level(path) <= depth:
            t = model.type_at(path)
            rows.append((f"{'  ' * _level(path)}{printable(path or model.name)}", short(kind_label(node), 60),
                         "" if t == UNKNOWN else str(t), _fmt_params(params.get(path, 0))))
    return rows


def summary_table(model: Any, depth: int | None = 3) -> str:
    """A torchinfo-like table: path, kind, output type and parameters per module, then totals."""
    from torchgraft.backends.graph import param_counts
    from torchgraft.ir.printer import format_input
    from torchgraft.ir.traverse import walk

    rows = summary_rows(model, depth)
    hidden = sum(1 for _ in walk(model.root)) - len(rows)
    head = ("path", "kind", "output type", "params")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    rule = "-" * (sum(widths) + 6)

    def fmt(r: tuple[str, ...]) -> str:
        return f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2].ljust(widths[2])}  {r[3].rjust(widths[3])}"

    inputs = ", ".join(format_input(i) for i in model.inputs)
    out = [f"model {model.name}({inputs}) -> {model.output_type}", rule, fmt(head), rule, *map(fmt, rows), rule]
    if hidden:
        out.append(f"({hidden} deeper modules not shown; use --depth N or --all)")
    size = sum(getattr(v, "nbytes", 0) for v in model.weights.values())
    out.append(f"total params: {param_counts(model).get('', 0):,}    state_dict: {len(model.weights)} tensors, "
               f"{size / 2**20:.2f} MB")
    return "\n".join(x.rstrip() for x in out)


if __name__ == "__main__":
    sys.exit(main())
