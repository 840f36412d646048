"""Reading and editing emitted source (our own emitter's output, never a model's text) through ``ast``.

``emit.py`` builds ``system.py`` from several emissions of the same models: these helpers find a
method's lines, compare the definitions two emissions share, rewrite the torch import lines to
what the final text uses, and list the names a class reads that nothing defines.
"""

from __future__ import annotations

import ast
import builtins

from torchgraft.errors import EmitError

TORCH_IMPORTS = ("import torch", "import torch.nn.functional as F", "from torch import Tensor, nn")
"""The torch import lines emitted code may need: each kept only when the text uses its names."""


def parsed(source: str, what: str) -> ast.Module:
    """``source`` parsed (an internal error when it does not parse)."""
    try:
        return ast.parse(source)
    except SyntaxError as e:
        raise EmitError(f"internal: the emitted {what} does not parse ({e}); please report it") from e


def class_def(tree: ast.Module, name: str) -> ast.ClassDef:
    """The module-level class ``name`` (an internal error when there is not exactly one)."""
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    if len(found) != 1:
        raise EmitError(f"internal: the emitted source has {len(found)} classes called {name} (a model class may "
                        "be called System: rename it)")
    return found[0]


def method_def(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    """Method ``name`` of ``cls`` (an internal error when it has none)."""
    for n in cls.body:
        if isinstance(n, ast.FunctionDef) and n.name == name:
            return n
    raise EmitError(f"internal: the emitted class {cls.name} has no method {name}")


def definitions(tree: ast.Module, source: str, skip: frozenset[str]) -> dict[str, str]:
    """The text of every module-level class, function and single-name assignment, by name (``skip`` left out)."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            name = node.name
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            continue
        if name not in skip:
            out[name] = ast.get_source_segment(source, node) or ""
    return out


def _module_names(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return out


def unbound(tree: ast.Module, cls: ast.ClassDef) -> list[str]:
    """Names the class reads that neither it (arguments, assignments), the module nor builtins define."""
    loads, local = [], set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Name):
            (loads.append(node.id) if isinstance(node.ctx, ast.Load) else local.add(node.id))
        elif isinstance(node, ast.arg):
            local.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            local.add(node.name)
    known = local | _module_names(tree) | set(dir(builtins))
    return sorted({n for n in loads if n not in known})


def _is_torch_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return [(a.name, a.asname) for a in node.names] in ([("torch", None)], [("torch.nn.functional", "F")])
    return (isinstance(node, ast.ImportFrom) and node.module == "torch" and node.level == 0
            and all(a.asname is None and a.name in ("Tensor", "nn") for a in node.names))


def with_torch_imports(source: str) -> str:
    """``source`` with its torch import lines (``TORCH_IMPORTS``) made exactly those its names need.

    >>> with_torch_imports("from torch import nn\\n\\nx: torch.Tensor = nn.Identity()\\n")
    'import torch\\nfrom torch import nn\\n\\nx: torch.Tensor = nn.Identity()\\n'
    """
    tree = parsed(source, "system")
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    wanted = []
    for line, names in ((TORCH_IMPORTS[0], ["torch"]), (TORCH_IMPORTS[1], ["F"]), (None, ["Tensor", "nn"])):
        kept = [n for n in names if n in used]
        if kept:
            wanted.append(line or f"from torch import {', '.join(kept)}")
    lines = source.splitlines(keepends=True)
    old = [n for n in tree.body if _is_torch_import(n)]
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    at = old[0].lineno - 1 if old else (imports[-1].end_lineno or 0) if imports else 0
    drop = {i for n in old for i in range(n.lineno - 1, n.end_lineno or n.lineno)}
    block = ("\n" if not old and imports else "") + "".join(f"{w}\n" for w in wanted)
    out = []
    for i, line in enumerate(lines):
        if i == at:
            out.append(block)
        if i not in drop:
            out.append(line)
    return "".join(out) + (block if at >= len(lines) else "")
