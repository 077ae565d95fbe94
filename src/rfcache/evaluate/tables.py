"""A benchmark result as a text table, a Markdown table, and JSON records (written atomically)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from rfcache.evaluate.bench import BenchRecord, BenchResult

__all__ = ["format_table", "load_json", "markdown_table", "save_json", "save_text"]

_COLUMNS = [
    ("setting", "setting", "{}"),
    ("method", "method", "{}"),
    ("source", "source", "{}"),
    ("NFC", "nfc", "{:.1f}"),
    ("FLOP frac", "flops_fraction", "{:.3f}"),
    ("speed-up", "speedup", "{:.2f}x"),
    ("rel-L2 [95% CI]", "rel_l2", "{:.4g}"),
    ("vs ref [95% CI]", "ratio", "{:.2f}x"),
    ("PSNR dB", "psnr", "{:.2f}"),
    ("SSIM", "ssim", "{:.4f}"),
    ("state MiB", "state_mib", "{:.2f}"),
]
_DIGITS = [("class acc", "class_accuracy", "{:.3f}"), ("Fréchet", "frechet", "{:.2f}")]


def _rows(result: BenchResult, *, params: bool = False) -> tuple[list[str], list[list[str]]]:
    columns = _COLUMNS + (_DIGITS if result.reference.get("class_accuracy") is not None else [])
    columns += [("params", "params", "{}")] if params else []
    full = BenchRecord("full", "-", "-", result.steps, 1.0, 1.0, 0.0, math.inf, 1.0, speedup=1.0)
    full.class_accuracy, full.frechet = result.reference.get("class_accuracy"), result.reference.get("frechet")
    rows = []
    for record in [full, *result.records]:
        row = []
        for _, attr, fmt in columns:
            value = getattr(record, attr)
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
            ok = value is not None and not (isinstance(value, float) and math.isnan(value))
            row.append(_with_interval(record, attr, fmt.format(value)) if ok else "-")
        rows.append(row)
    reference = next((r.reference for r in result.records if r.reference), None)
    header = [f"vs {reference} [95% CI]" if c[1] == "ratio" and reference else c[0] for c in columns]
    return header, rows


def _with_interval(record: BenchRecord, attr: str, text: str) -> str:
    """The 95 % interval after a mean rel-L2 or a paired ratio; a ratio says "lower"/"higher" when it excludes 1."""
    bounds = {"rel_l2": (record.rel_l2_ci95, "{:.4g}"), "ratio": (record.ratio_ci95, "{:.2f}")}.get(attr)
    if bounds is None or None in bounds[0] or len(bounds[0]) != 2:
        return text
    (low, high), fmt = bounds
    text = f"{text} [{fmt.format(low)}, {fmt.format(high)}]"
    if attr == "ratio" and record.method != record.reference:
        text += " lower" if high < 1 else " higher" if low > 1 else ""
    return text


def format_table(result: BenchResult) -> str:
    """Aligned plain-text table, one row per (method, setting) after the full-compute row."""
    header, rows = _rows(result)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += [f"skipped {name}: {why}" for name, why in result.skipped.items()]
    return "\n".join(lines)


def markdown_table(result: BenchResult) -> str:
    header, rows = _rows(result, params=True)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if result.skipped:
        lines += ["", *(f"- skipped `{name}`: {why}" for name, why in result.skipped.items())]
    return "\n".join(lines) + "\n"


def save_text(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` through a temporary name, so no half-written file is left."""
    from rfcache.outputs import write_file

    return write_file(path, lambda tmp: tmp.write_text(text))


def save_json(result: BenchResult, path: Path) -> Path:
    """A JSON list of records, one per (method, setting); the full-compute reference is the first."""
    reference = {
        "method": "full",
        "setting": "",
        "source": "rfcache",
        "nfc": result.steps,
        "flops_fraction": 1.0,
        "rel_l2": 0.0,
        "psnr": None,
        "ssim": 1.0,
        "speedup": 1.0,
        **{k: v for k, v in result.reference.items()},
        "model": result.model,
        "samples": result.samples,
    }
    records = [reference] + [{**r.to_json(), "model": result.model, "samples": result.samples} for r in result.records]
    return save_text(json.dumps(records, indent=1) + "\n", path)


def load_json(path: Path) -> BenchResult:
    """A result back from :func:`save_json` (to re-plot or re-tabulate without re-running)."""
    records = json.loads(Path(path).read_text())
    head, rest = records[0], records[1:]
    fields = {f.name for f in dataclasses.fields(BenchRecord)}
    nan = {"speedup", "seconds", "psnr"}
    rows = [
        BenchRecord(**{k: (math.nan if v is None and k in nan else v) for k, v in r.items() if k in fields})
        for r in rest
    ]
    reference = {k: head.get(k) for k in ("flops", "class_accuracy", "frechet", "seconds")}
    return BenchResult(head["model"], int(head["nfc"]), head["samples"], rows, reference, {})
