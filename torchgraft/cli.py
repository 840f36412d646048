"""The ``torchgraft`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``torchgraft`` and ``python -m torchgraft``."""
    parser = argparse.ArgumentParser(prog="torchgraft", description="Model surgery for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="capture -> rewrite -> emit -> reload on the bundled model")
    demo.add_argument("-o", "--out", help="folder for model.py and weights (default: a temp folder)")
    demo.add_argument("--quiet", action="store_true", help="do not print the emitted source")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from torchgraft.demo import run

        diff = run(args.out, show_source=not args.quiet)
        return 0 if diff <= 1e-4 else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
