"""The paper's table shape from ``rfc-bench --json`` files: rel-L2 per method and NFC, and its ratio to TaylorSeer.

    python benchmarks/bench_paper_table.py docs/bench-toy.json docs/bench-tiny-*.json

Rows follow the paper's ablation (FORA, TaylorSeer, +RFE, +RCS, both = RFC), then rfcache's
calibrated static profile and the other libraries' methods; each cell is ``rel-L2 (paired ratio to
TaylorSeer m=2 [95% CI]) @ measured FLOP fraction``, rel-L2 the mean per sample. The best error of
each column is in bold. Then the verdicts: the static profile against TaylorSeer m=2, dynamic RFC
and diffusers' TaylorSeer hook, each a paired per-sample ratio with its 95 % bootstrap interval
("lower"/"higher" only where the interval excludes 1); RFE m=2 and dynamic RFC against TaylorSeer
m=2; and the profile against SmoothCache and against the best other library's method at each
setting (picked on the reported inputs: the hardest comparison for us, never a choice of ours).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rfcache.stats import Interval, paired_ratio

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
            ratio = _ratio(r, by.get(("taylorseer-m2", s)))
            ratio = f" ({_x(ratio)})" if ratio else ""
            value = f"{r['rel_l2']:.4g}"
            value = f"**{value}**" if r["rel_l2"] == best[s] else value
            cells.append(f"{value}{ratio} @ {r['flops_fraction']:.3f}")
        source = next(by[m, s]["source"] for s in settings if (m, s) in by)
        lines.append(f"| {ROWS.get(m, m)} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(record: dict, reference: dict | None) -> Interval | None:
    """The paired per-sample ratio of ``record`` to ``reference`` (the ratio of means for old records)."""
    if reference is None:
        return None
    a, b = record.get("rel_l2_samples"), reference.get("rel_l2_samples")
    if a and b and len(a) == len(b):
        return paired_ratio(a, b)
    return Interval(record["rel_l2"] / reference["rel_l2"], float("nan"), float("nan"))


def _x(ratio: Interval) -> str:
    """``0.66x [0.60, 0.72]`` (the interval left out where undefined)."""
    return f"{ratio.value:.2f}x" + ("" if ratio.low != ratio.low else f" [{ratio.low:.2f}, {ratio.high:.2f}]")


BEST_PEER = "best peer"  # per setting, the other libraries' method with the lowest mean error there
VERDICT_PAIRS = [
    ("static", "taylorseer-m2"),
    ("rfe-m2", "taylorseer-m2"),
    ("rfc", "taylorseer-m2"),
    ("static", "rfc"),
    ("static", "diffusers-taylorseer-m2"),
    ("static", "smoothcache"),
    ("static", BEST_PEER),
]


def _best_peer(records: list[dict], setting: str) -> dict | None:
    """The lowest-error record at ``setting`` from another library (the hardest comparison for us)."""
    peers = [r for r in records if r["setting"] == setting and r["source"] not in ("rfcache", "-")]
    return min(peers, key=lambda r: r["rel_l2"], default=None)


def verdicts(records: list[dict]) -> str:
    """One line per (pair, setting): the paired ratio with its interval and what it says."""
    by = {(r["method"], r["setting"]): r for r in records}
    settings = list(dict.fromkeys(r["setting"] for r in records if r["method"] != "full"))
    lines = ["| A / B | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for a, b in VERDICT_PAIRS:
        cells = []
        for s in settings:
            other = _best_peer(records, s) if b == BEST_PEER else by.get((b, s))
            ratio = _ratio(by[a, s], other) if (a, s) in by else None
            if ratio is None:
                cells.append("-")
                continue
            word = {"lower": "A lower", "higher": "A higher", "tie": "no clear difference"}[ratio.verdict()]
            named = f" ({other['method']})" if b == BEST_PEER else ""
            cells.append(
                f"{_x(ratio)}: {word}{named}" if ratio.low == ratio.low else f"{_x(ratio)} (no per-sample errors)"
            )
        lines.append(f"| {ROWS.get(a, a)} / {ROWS.get(b, b)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.files:
        records = json.loads(path.read_text())
        print(f"\n{records[0]['model']} ({path.name}, {records[0]['samples']} samples)\n")
        print(table(records))
        print()
        print(verdicts(records))


if __name__ == "__main__":
    main()
