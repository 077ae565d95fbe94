"""The paper's table shape from ``rfc-bench --json`` files: rel-L2 per method and NFC, and its ratio to TaylorSeer.

    python benchmarks/bench_paper_table.py docs/bench-toy.json docs/bench-tiny-*.json

Rows follow the paper's ablation (FORA, TaylorSeer, +RFE, +RCS, both = RFC), then rfcache's
calibrated static profile and the other libraries' methods; each cell is ``rel-L2 (ratio to
TaylorSeer m=2) @ measured FLOP fraction``. The best error of each column is in bold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = {
    "fora": "FORA",
    "taylorseer-m2": "TaylorSeer (m=2)",
    "rfe-m2": "+RFE",
    "rcs": "+RCS",
    "rfc": "+RFE +RCS = RFC (dynamic)",
    "static": "RFC calibrated static profile",
    "taylorseer-m1": "TaylorSeer (m=1)",
    "rfe-m1": "+RFE (m=1)",
}


def table(records: list[dict]) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in records if r["method"] != "full"))
    by = {(r["method"], r["setting"]): r for r in records}
    methods = [m for m in ROWS if any((m, s) in by for s in settings)]
    methods += list(dict.fromkeys(r["method"] for r in records if r["method"] not in ROWS and r["method"] != "full"))
    best = {s: min(by[m, s]["rel_l2"] for m in methods if (m, s) in by) for s in settings}
    lines = ["| method | source | " + " | ".join(settings) + " |", "|---|---|" + "---|" * len(settings)]
    for m in methods:
        cells = []
        for s in settings:
            r = by.get((m, s))
            if r is None:
                cells.append("-")
                continue
            ts = by.get(("taylorseer-m2", s))
            ratio = f" ({r['rel_l2'] / ts['rel_l2']:.2f}x)" if ts else ""
            value = f"{r['rel_l2']:.4g}"
            value = f"**{value}**" if r["rel_l2"] == best[s] else value
            cells.append(f"{value}{ratio} @ {r['flops_fraction']:.3f}")
        source = next(by[m, s]["source"] for s in settings if (m, s) in by)
        lines.append(f"| {ROWS.get(m, m)} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.files:
        records = json.loads(path.read_text())
        print(f"\n{records[0]['model']} ({path.name}, {records[0]['samples']} samples)\n")
        print(table(records))


if __name__ == "__main__":
    main()
