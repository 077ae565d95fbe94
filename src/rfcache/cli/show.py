"""``rfc-show``: print a profile readably, and optionally plot its schedule and fitted ratios."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import option
from rfcache.outputs import check_file_output, write_file

__all__ = ["ShowConfig", "format_profile", "plot_profile", "run_show"]

EXAMPLES = """examples:
  rfc-show toy-b0.4
  rfc-show profile.yaml --plot schedule.png
"""


@dataclass(frozen=True)
class ShowConfig:
    profile: str = option("", "profile YAML or shipped name (e.g. toy-b0.4)", flag="profile")
    plot: Path | None = option(None, "write a PNG of the schedule (steps x units) and the fitted ratios")


def format_profile(p: Any) -> str:
    """A few aligned lines a person can read at a glance."""
    m, s, b = p.model, p.sampling, p.budget
    params = ", ".join(f"{k}={v:g}" for k, v in p.method.params.items())
    lines = [
        f"profile           {p.name} (schema {p.schema_version})",
        f"model             {m.family}: {m.class_name}, config {m.config_hash}, {m.num_units} {m.granularity} units",
        f"sampling          {s.scheduler}, {s.num_steps} steps, guidance {s.guidance}, input {list(s.resolution)}",
        f"method            {p.method.predictor} m={p.method.order}, {p.method.schedule_family} ({params})",
        f"schedule          {p.schedule}",
        f"                  NFC {p.nfc} of {s.num_steps}{_every_unit(p)}; C = computed, P = predicted",
        *_unit_lines(p),
        *[_expert_line(p, e) for e in p.experts or ()],
        f"budget            target {b.target:g}, achieved {b.achieved:.4f} of module FLOPs",
        "ratios            "
        + (f"fitted for {len(p.ratios)} units, {min(p.ratios):.3g}..{max(p.ratios):.3g}; " if p.ratios else "")
        + (f"{p.ratio_form} " if p.ratio_slopes else "")
        + ("calibrated ratios used" if p.method.params.get("calibrated") else "run-time ratios used"),
    ]
    lines += [f"quality           {k} = {v:.5g}" for k, v in p.quality.items()]
    lines += [f"diagnostics       {k} = {v:.4g}" for k, v in p.diagnostics.items()]
    prov = p.provenance
    versions = ", ".join(f"{k} {v}" for k, v in prov.versions.items())
    dtype = f", {prov.dtype}" if prov.dtype else ""
    lines.append(
        f"provenance        {prov.created}, seed {prov.seed}, {prov.trials} trials, inputs {prov.inputs_hash}{dtype}"
    )
    lines.append(f"                  {versions}")
    return "\n".join(lines)


def _every_unit(p: Any) -> str:
    return " (steps every unit computes)" if p.per_unit else ""


def _unit_lines(p: Any) -> list[str]:
    """A per-unit profile's rows, one per unit or group (the ``schedule`` line is then every unit's full steps)."""
    if not p.per_unit:
        return []
    groups = p.unit_groups or {}
    weights = "per-unit FLOPs" if p.unit_costs else "equal unit weights (no unit_costs)"
    lines = [f"per unit          computes {p.computed_fraction():.4f} of unit FLOPs ({weights})"]
    width = max(len(key) for key in p.unit_schedules)
    for key, row in p.unit_schedules.items():
        members = f"  ({len(groups[key])} units: {', '.join(groups[key])})" if key in groups else ""
        lines.append(f"  {key:<{width}}  {row}  {row.count('C'):>3} C{members}")
    return lines


def _expert_line(p: Any, e: Any) -> str:
    """One expert of a two-expert profile: its steps of the schedule and its ratios."""
    first, stop = e.steps
    ratios = f", ratios {min(e.ratios):.3g}..{max(e.ratios):.3g}" if e.ratios else ""
    pattern = p.schedule[first:stop]
    return (
        f"expert            {e.component}: steps {first}-{stop - 1} ({pattern}), config {e.model.config_hash}{ratios}"
    )


def plot_profile(p: Any, path: Path) -> Path:
    """Schedule as a steps x units image (dark = computed), and the calibrated ratios per unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(p.unit_rows().values()) or [p.schedule] * p.model.num_units
    grid = np.array([[c == "C" for c in row] for row in rows], dtype=float)  # (units, steps)
    panels = 2 if p.ratios else 1
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3 + 2 * (panels - 1)), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("unit")
    if p.per_unit:  # each row names its unit
        names = list(p.unit_rows())
        ax.set_yticks(range(len(names)), names, fontsize=max(4, min(8, 400 // max(len(names), 1))))
    ax.set_title(
        f"{p.name}: NFC {p.nfc}/{p.sampling.num_steps}, {p.budget.achieved:.3f} of module FLOPs (dark = computed)"
    )
    if p.ratios:
        ax = axes[1, 0]
        ax.bar(range(len(p.ratios)), p.ratios, color="tab:blue")
        ax.set_xlabel("unit")
        used = "used at run time" if p.method.params.get("calibrated") else "run-time ratios used instead"
        ax.set_ylabel("fitted s = |ΔO| / |ΔI|")
        ax.set_title(f"relation ratio per unit ({used})")
    fig.tight_layout()
    try:
        return write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), flag="--plot")
    finally:
        plt.close(fig)


def run_show(cfg: ShowConfig) -> tuple[Any, Path | None]:
    from rfcache.schedules import load_profile

    if cfg.plot is not None:
        check_file_output(cfg.plot, flag="--plot", suffixes=(".png",), what="plot")
    profile = load_profile(cfg.profile)
    return profile, (plot_profile(profile, cfg.plot) if cfg.plot is not None else None)


def report(cfg: ShowConfig, result: tuple[Any, Path | None]) -> str:
    profile, plot = result
    return format_profile(profile) + (f"\nwrote {plot}" if plot is not None else "")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("show", help="print or plot a profile", description=__doc__, epilog=EXAMPLES)
