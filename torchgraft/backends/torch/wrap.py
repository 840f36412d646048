"""Wrap a long statement at its last outermost bracket, one argument per line (black's "right split").

The statement is tokenized, so brackets and commas inside strings never count. A
trailing comma is added only where the bracket already holds a comma-separated list,
so ``(a)`` never turns into the tuple ``(a,)`` and a subscript never changes meaning.
"""

from __future__ import annotations

import io
import tokenize

WIDTH = 88
_OPEN, _CLOSE = "([{", ")]}"


def _tokens(code: str) -> list[tokenize.TokenInfo] | None:
    try:
        return [t for t in tokenize.generate_tokens(io.StringIO(code).readline)
                if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.COMMENT)]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None


def _split_point(toks: list[tokenize.TokenInfo]) -> tuple[int, int] | None:
    """Token indices of the widest bracket pair at depth 0 (the last of equals) with something inside."""
    depth, best, start, span = 0, None, -1, 0
    for i, t in enumerate(toks):
        if t.type == tokenize.OP and t.string in _OPEN:
            if depth == 0:
                start = i
            depth += 1
        elif t.type == tokenize.OP and t.string in _CLOSE:
            depth -= 1
            width = t.start[1] - toks[start].end[1]
            if depth == 0 and i > start + 1 and width >= span:
                best, span = (start, i), width
    return best


def _args(toks: list[tokenize.TokenInfo], lo: int, hi: int) -> list[tuple[int, int]] | None:
    """Column spans of the comma-separated parts between tokens lo and hi (None: a comprehension)."""
    depth, parts, begin = 0, [], toks[lo + 1].start[1]
    for t in toks[lo + 1:hi]:
        if t.type == tokenize.OP and t.string in _OPEN:
            depth += 1
        elif t.type == tokenize.OP and t.string in _CLOSE:
            depth -= 1
        elif depth == 0 and t.type == tokenize.NAME and t.string == "for":
            return None
        elif depth == 0 and t.type == tokenize.OP and t.string == ",":
            parts.append((begin, t.start[1]))
            begin = t.end[1]
    parts.append((begin, toks[hi].start[1]))
    return parts


def wrap(line: str, width: int = WIDTH) -> list[str]:
    """``line`` (one statement, with its indentation) as lines no longer than ``width`` where possible."""
    if len(line) <= width or "\n" in line:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    code = line.strip()
    toks = _tokens(code)
    if not toks or any(t.start[0] != 1 for t in toks):
        return [line]
    point = _split_point(toks)
    if point is None:
        return [line]
    lo, hi = point
    parts = _args(toks, lo, hi)
    head, tail = code[: toks[lo].end[1]], code[toks[hi].start[1]:]
    if parts is None or len(parts) == 1:
        inner = [code[toks[lo].end[1]: toks[hi].start[1]].strip()]
        comma = ""
    else:
        inner = [code[a:b].strip() for a, b in parts]
        comma = ","
        if not inner[-1]:
            inner.pop()
    out = [indent + head]
    joined = ", ".join(inner)
    if len(inner) > 1 and len(indent) + 4 + len(joined) <= width:
        return out + [f"{indent}    {joined}", indent + tail]
    for item in inner:
        out += wrap(f"{indent}    {item}{comma}", width)
    return out + [indent + tail]
