"""Plots of a benchmark result: quality against measured FLOPs, and each method's per-step compute."""

from __future__ import annotations

from pathlib import Path

from rfcache.evaluate.bench import BenchResult

__all__ = ["pattern_plot_path", "plot_patterns", "plot_quality"]

_MARKERS = "osD^v<>pP*Xhd8"


def _save(fig, path: Path) -> Path:
    from rfcache.outputs import write_file

    return write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"), flag="--plot")


def plot_quality(result: BenchResult, path: Path) -> Path:
    """Rel-L2 to full compute (log) against measured FLOP fraction, one marker and line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in result.records))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for k, method in enumerate(methods):
        rows = sorted((r for r in result.records if r.method == method), key=lambda r: r.flops_fraction)
        source = rows[0].source
        style = "-" if source == "rfcache" else "--" if source == "diffusers" else ":"
        ax.plot(
            [r.flops_fraction for r in rows],
            [max(r.rel_l2, 1e-6) for r in rows],
            style,
            marker=_MARKERS[k % len(_MARKERS)],
            label=f"{method} ({source})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("FLOP fraction of full compute (measured, transformer)")
    ax.set_ylabel("relative L2 to full compute")
    ax.set_title(f"{result.model}: {result.steps} steps, {result.samples} samples")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = _save(fig, path)
    plt.close(fig)
    return path


def pattern_plot_path(path: Path) -> Path:
    """Where :func:`plot_patterns` goes beside the quality plot ``path``: ``<stem>-patterns.png``."""
    return path.with_name(f"{path.stem}-patterns{path.suffix}")


def plot_patterns(result: BenchResult, path: Path) -> Path:
    """Per setting, a heat map: rows are methods, columns steps, colour the share of a full step's FLOPs spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings = list(dict.fromkeys(r.setting for r in result.records))
    fig, axes = plt.subplots(
        len(settings), 1, figsize=(9, 0.9 + 0.28 * len(result.records) + 0.4 * len(settings)), squeeze=False
    )
    image = None
    for ax, setting in zip(axes[:, 0], settings, strict=True):
        rows = [r for r in result.records if r.setting == setting]
        width = max(len(r.step_fractions) for r in rows)
        grid = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            grid[i, : len(r.step_fractions)] = r.step_fractions
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(rows)), [f"{r.method} ({r.flops_fraction:.2f})" for r in rows], fontsize=7)
        ax.set_title(f"{setting}: share of a full step's FLOPs per step (first sample)", fontsize=9)
    axes[-1, 0].set_xlabel("denoising step")
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.03)
    path = _save(fig, path)
    plt.close(fig)
    return path
