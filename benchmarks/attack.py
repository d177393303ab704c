"""Hostile-user attack on the stage CLIs: one verdict per case, run in CI as tests.

Each case builds its own input in a temp folder and runs a stage (or the predict CLI, or a
server) as a subprocess exactly as DVC or a user would. A bad input must exit 2 with one
`error: ...` line naming the file/column/key, no traceback and nothing written; an unusual
input a careful data scientist would handle must give the correct result. Cases live by area
in benchmarks/attacks/*.py; tests/test_attack.py runs every one.

    python benchmarks/attack.py            # one table row per case; exit 1 if any fails
    python benchmarks/attack.py -k tables  # only cases whose area or name contains "tables"
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_result
from attacks.common import Case, run_case


def all_cases() -> list[tuple[str, Case]]:
    """(area, case) for every case of every module in benchmarks/attacks/."""
    folder = Path(__file__).resolve().parent / "attacks"
    out = []
    for path in sorted(folder.glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        module = importlib.import_module(f"attacks.{path.stem}")
        out += [(path.stem, case) for case in module.CASES]
    return out


def main() -> None:
    """Print | area | case | result | exit code and message | for every selected case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose area or name contains this")
    args = parser.parse_args()
    cases = [(a, c) for a, c in all_cases() if args.k in a or args.k in c.name]
    print("| area | case | result | exit code: message |\n|---|---|---|---|")
    verdicts = []
    for area, case in cases:
        ok, what = run_case(case)
        verdicts.append({"area": area, "case": case.name, "ok": ok, "what": what})
        print(f"| {area} | {case.name} | {'ok' if ok else 'FAIL'} | "
              f"{what.replace('|', '/')} |", flush=True)
    failed = sum(not v["ok"] for v in verdicts)
    print(f"\n{len(cases) - failed}/{len(cases)} cases hold")
    # A -k run gets its own file: a subset must not replace the full list's record.
    area = f"_{re.sub(r'[^A-Za-z0-9]+', '-', args.k)}" if args.k else ""
    write_result(f"attack{area}", {"k": args.k, "cases": len(cases),
                                   "hold": len(cases) - failed, "verdicts": verdicts})
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
