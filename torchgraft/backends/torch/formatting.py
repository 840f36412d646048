"""Emitted source as ``ruff format`` writes it: the model.py a user gets is formatter-stable.

The writers already lay code out close to ruff's style (double quotes, 88 columns, calls split
at their last bracket); ruff's formatter, a dependency of torchgraft (``setup.cfg`` pins its minor
version, so the same IR always gives the same text), then makes the text exactly what
``ruff format --isolated`` (its defaults: 88 columns, double quotes, no user config) leaves
unchanged. That covers what the writers cannot lay out themselves, such as helper functions
copied from a library's source.

Formatting never changes meaning: the formatted text must parse to the same AST as the
writer's (docstrings aside, whose indentation ruff normalises), else the writer's text is kept
with a warning, as it is when ruff cannot be run at all.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import warnings

RUFF_FORMAT = ("format", "--isolated", "--stdin-filename", "model.py", "-")
"""The ruff command line (after the executable): its defaults, no config file, source on stdin."""


class FormatWarning(UserWarning):
    """The emitted source could not be run through ruff's formatter and is written as the writers laid it out."""


@functools.cache
def ruff_executable() -> str | None:
    """The ruff binary of the installed ``ruff`` package (None when it is not installed).

    >>> ruff_executable() is None or ruff_executable().endswith(("ruff", "ruff.exe"))
    True
    """
    try:
        from ruff import find_ruff_bin
    except ImportError:
        return None
    try:
        return str(find_ruff_bin())
    except FileNotFoundError:
        return None


def formatted(source: str) -> str:
    """``source`` as ``ruff format --isolated`` writes it (``source`` itself, with a warning, where it cannot).

    >>> formatted("x = {'a':1}\\n")  # doctest: +SKIP
    'x = {"a": 1}\\n'
    """
    ruff = ruff_executable()
    if ruff is None:
        warnings.warn("ruff is not installed: model.py is written unformatted (pip install 'ruff>=0.17,<0.18')",
                      FormatWarning, stacklevel=3)
        return source
    try:
        proc = subprocess.run([ruff, *RUFF_FORMAT], input=source, capture_output=True, text=True, timeout=120,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        warnings.warn(f"ruff format could not run ({e}): model.py is written unformatted", FormatWarning,
                      stacklevel=3)
        return source
    if proc.returncode != 0:
        warnings.warn(f"ruff format refused the emitted source ({proc.stderr.strip()[:300]}): model.py is "
                      "written unformatted", FormatWarning, stacklevel=3)
        return source
    if not same_code(source, proc.stdout):
        warnings.warn("ruff format changed the meaning of the emitted source (a ruff bug): model.py is written "
                      "unformatted", FormatWarning, stacklevel=3)
        return source
    return proc.stdout


def same_code(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` parse to the same AST, docstrings left out.

    >>> same_code("x = (1 +\\n 2)", "x = 1 + 2")
    True
    """
    try:
        return _dump(a) == _dump(b)
    except (SyntaxError, ValueError, RecursionError):
        return False


def _dump(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            body[0].value.value = ""
    return ast.dump(tree)
