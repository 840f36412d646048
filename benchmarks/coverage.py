"""The family coverage table: every case of ``tests/families.py`` captured, emitted, reloaded and compared.

    python benchmarks/coverage.py                    # print the Markdown table
    python benchmarks/coverage.py --write README.md  # replace the table between the coverage markers
    python benchmarks/coverage.py --only recurrent,transformers   # families whose name contains a word
    python benchmarks/coverage.py --save out.json    # also keep the outcomes
    python benchmarks/coverage.py --only detection --merge out.json --write README.md
                                                     # rerun some, take the other rows from a saved run

Columns: captured (``capture`` returned), emitted (``emit`` returned), strict (the original state_dict
loads ``strict=True`` into ``build()``, same keys), matches (the emitted model, in a fresh process
without torchgraft, equals eager at every call of the case: the capture example and another
batch size or length; a call refused by a guard is listed in the notes). A clean refusal is a
``CaptureError``/``EmitError``; a raw error is a bug and is marked as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from families import all_cases  # noqa: E402
from family_check import Outcome, check_case  # noqa: E402

START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"


def _mark(ok: bool) -> str:
    return "yes" if ok else "no"


def _note(o: Outcome) -> str:
    text = "; ".join(o.notes)
    if o.error:
        kind = "refused" if o.refused else "fails"
        text = f"{kind}: {o.error}" + (f"; {text}" if text else "")
    text = re.sub(r"\s+", " ", text).replace("|", "\\|")
    return text[:160] + ("…" if len(text) > 160 else "")


def table(outcomes: list[Outcome]) -> str:
    """The Markdown table, one row per case, and a count per column."""
    rows = ["| family | model | captured | emitted | strict | matches | notes |",
            "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        rows.append(f"| {o.family} | {o.case} | {_mark(o.captured)} | {_mark(o.emitted)} | {_mark(o.strict)} "
                    f"| {_mark(o.matches)} | {_note(o)} |")
    n = len(outcomes)
    rows.append(f"| **all** | {n} models | {sum(o.captured for o in outcomes)} | {sum(o.emitted for o in outcomes)} "
                f"| {sum(o.strict for o in outcomes)} | {sum(o.matches for o in outcomes)} | |")
    return "\n".join(rows)


def write(path: Path, text: str) -> None:
    """Replace what lies between the coverage markers of ``path`` with ``text``."""
    doc = path.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{path} has no {START} ... {END} markers; add them where the table goes")
    head, rest = doc.split(START, 1)
    path.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated words; keep families or models containing one")
    parser.add_argument("--write", type=Path, help="a Markdown file with coverage markers to update")
    parser.add_argument("--save", type=Path, help="a JSON file to keep the outcomes in")
    parser.add_argument("--merge", type=Path, help="a saved JSON run: its rows fill in the cases not rerun")
    ns = parser.parse_args()
    saved = {o["case"]: Outcome(**o) for o in json.loads(ns.merge.read_text())} if ns.merge else {}
    words = [w.lower() for w in ns.only.split(",") if w]
    outcomes = []
    for case in all_cases():
        if words and not any(w in case.family.lower() or w in case.name.lower() for w in words):
            if case.name in saved:
                outcomes.append(saved[case.name])
            continue
        start = time.perf_counter()
        outcome = check_case(case)
        took = time.perf_counter() - start
        print(f"{case.family:28} {case.name:40} {took:6.1f}s {'match' if outcome.matches else _note(outcome)}",
              file=sys.stderr)
        outcomes.append(outcome)
        gc.collect()
    if ns.save:
        ns.save.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=1))
    text = table(outcomes)
    print(text)
    if ns.write:
        write(ns.write, text)


if __name__ == "__main__":
    main()
