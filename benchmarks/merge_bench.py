"""Merge ``rfc-bench --json`` files of one model, inputs and seeds: later files replace or add records.

    python benchmarks/merge_bench.py base.json fix.json --json out.json --markdown out.md --plot out.png

For re-running some methods at some settings (a peer fixed after a long run) without re-running
the rest. Every file must hold the same model, step count and samples (and so the same
full-compute reference); each record's paired ratio to ``--reference`` is recomputed on the merged
records. Records keep their order in the base file; added ones come after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfcache.evaluate.bench import pair_with_reference
from rfcache.evaluate.plots import pattern_plot_path, plot_patterns, plot_quality
from rfcache.evaluate.tables import load_json, markdown_table, save_json, save_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="the base file first, then the ones that replace records")
    parser.add_argument("--reference", default="taylorseer-m2", help="method the paired ratios are taken against")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    base, *others = [load_json(path) for path in args.files]
    records = {(r.method, r.setting): r for r in base.records}
    for path, other in zip(args.files[1:], others, strict=True):
        if (other.model, other.steps, other.samples) != (base.model, base.steps, base.samples):
            print(
                f"{path}: {other.model}, {other.steps} steps, {other.samples} samples; "
                f"expected {base.model}, {base.steps} steps, {base.samples} samples as in {args.files[0]}",
                file=sys.stderr,
            )
            return 2
        records.update({(r.method, r.setting): r for r in other.records})
    base.records = list(records.values())
    base.reference = {k: v for k, v in base.reference.items() if v is not None}  # as rfc-bench writes it
    pair_with_reference(base.records, args.reference)
    print(f"wrote {save_json(base, args.json)}")
    if args.markdown:
        print(f"wrote {save_text(markdown_table(base), args.markdown)}")
    if args.plot:
        print(f"wrote {plot_quality(base, args.plot)}")
        print(f"wrote {plot_patterns(base, pattern_plot_path(args.plot))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
