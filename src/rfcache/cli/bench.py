"""``rfc-bench``: every caching method on one model at matched FLOPs — quality, cost, speed.

Methods: rfcache's fora, taylorseer-m1/-m2, rfe-m1/-m2, rcs, rfc (dynamic), static (a profile
calibrated at each target's budget) and profile:NAME (a profile at its own budget); diffusers'
diffusers-taylorseer-m1/-m2, diffusers-fbc, diffusers-magcache; cache-dit's cache-dit-dbcache and
cache-dit-dbcache-taylorseer (the bench extra). Peers whose package is missing are skipped with a
message. FLOP fractions are measured by one FlopCounterMode for every method; wall time is measured
in one process, methods interleaved after a warm-up.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rfcache.cli._args import dtype_option, option, torch_dtype
from rfcache.cli._run import RunFlags, run_spec
from rfcache.outputs import check_file_output

__all__ = ["BenchCommandConfig", "check_flags", "run_bench_command"]

EXAMPLES = """examples:
  rfc-bench                                            # toy model, NFC 14,10,7 of 50 steps, all methods
  rfc-bench --methods fora,taylorseer-m2,rfe-m2,rcs,rfc --samples 20 --markdown bench.md --plot bench.png
  rfc-bench --budget 0.3,0.2 --methods rfc,static,diffusers-fbc --json bench.json
  rfc-bench --model tiny:flux --steps 20 --nfc 8,5 --samples 2
  rfc-bench --methods rfc,profile:toy-b0.4              # a shipped profile at its own cost
  rfc-bench --model ./my-pixart --prompts prompts.txt --height 512 --width 768 --steps 20 --nfc 8 --samples 4
"""


@dataclass(frozen=True)
class BenchCommandConfig(RunFlags):
    model: str = option("toy", "'toy', 'toy-flux', 'tiny:FAMILY' (dit, pixart, sd3, flux, wan), a folder or hub id")
    steps: int = option(50, "number of inference steps", at_least=2)  # type: ignore[assignment]
    nfc: tuple[int, ...] = option((14, 10, 7), "target costs as full steps of the interval schedules", at_least=1)
    budget: tuple[float, ...] = option(
        (), "target costs as measured FLOP fractions (replaces --nfc)", above=0, at_most=1
    )
    methods: tuple[str, ...] | None = option(None, "comma-separated methods (default: all; see the list above)")
    samples: int = option(10, "evaluated samples per method (seeds SEED, SEED+1, ...)", at_least=1)
    seed: int = option(  # type: ignore[assignment]
        1000, "base seed of the evaluated samples (tuning samples use SEED+500..; calibration's 0..13 are kept apart)"
    )
    tune_samples: int = option(2, "samples used to match each swept method's FLOP fraction", at_least=1)
    repeats: int = option(3, "timed rounds after one warm-up round (0: no timing)", at_least=0)
    calibrate_trials: int = option(24, "Optuna trials per calibrated static profile", at_least=1)
    reference: str = option(
        "taylorseer-m2", "method every other is compared with per sample (paired ratio; none if it is not run)"
    )
    device: str = option("cpu", "torch device")
    dtype: str = dtype_option()
    json: Path | None = option(None, "write the records as a JSON list")
    markdown: Path | None = option(None, "write the table as Markdown")
    plot: Path | None = option(None, "write the quality-vs-FLOPs plot (PNG); the per-step pattern plot goes beside it")
    progress: bool = option(True, "show progress bars")


def run_bench_command(cfg: BenchCommandConfig):
    """Run the benchmark and write the requested files; returns the result and the paths written."""
    from rfcache.errors import RfcacheError
    from rfcache.evaluate.bench import DEFAULT_METHODS, BenchConfig, run_bench
    from rfcache.evaluate.plots import pattern_plot_path, plot_patterns, plot_quality
    from rfcache.evaluate.tables import markdown_table, save_json, save_text

    methods = _check_methods(cfg.methods) if cfg.methods is not None else DEFAULT_METHODS
    if cfg.json is not None:  # every output before the minutes a benchmark takes
        check_file_output(cfg.json, flag="--json", suffixes=(".json",), what="JSON file")
    if cfg.markdown is not None:
        check_file_output(cfg.markdown, flag="--markdown", suffixes=(".md",), what="Markdown file")
    if cfg.plot is not None:
        check_file_output(cfg.plot, flag="--plot", suffixes=(".png",), what="plot")
        check_file_output(pattern_plot_path(cfg.plot), flag="--plot", suffixes=(".png",), what="plot")
    result = run_bench(
        BenchConfig(
            model=cfg.model,
            steps=cfg.steps,
            nfc=cfg.nfc,
            budgets=cfg.budget,
            methods=methods,
            samples=cfg.samples,
            tune_samples=cfg.tune_samples,
            repeats=cfg.repeats,
            calibrate_trials=cfg.calibrate_trials,
            reference=cfg.reference,
            device=cfg.device,
            dtype=torch_dtype(cfg.dtype),
            progress=cfg.progress,
            seed=cfg.seed,
            run=run_spec(cfg) if _sets_run(cfg) else None,
        )
    )
    if not result.records and result.skipped:
        why = "; ".join(f"{name}: {reason}" for name, reason in result.skipped.items())
        raise RfcacheError(f"no method ran ({why})")
    written = []
    if cfg.json is not None:
        written.append(save_json(result, cfg.json))
    if cfg.markdown is not None:
        written.append(save_text(markdown_table(result), cfg.markdown))
    if cfg.plot is not None and result.records:
        written.append(plot_quality(result, cfg.plot))
        written.append(plot_patterns(result, pattern_plot_path(cfg.plot)))
    return result, written


def _check_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    """``--methods`` as given: not empty, no method twice (unknown names are refused by the benchmark)."""
    from rfcache.errors import RfcacheError

    if not methods:
        raise RfcacheError("--methods is empty; name at least one method (or leave the flag out for all)")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise RfcacheError(f"--methods names {', '.join(repeated)} more than once")
    return methods


def check_flags(cfg: BenchCommandConfig, given: set[str]) -> None:
    """Flags the benchmark would ignore."""
    from rfcache.errors import RfcacheError

    if cfg.class_labels:
        raise RfcacheError("--class: rfc-bench cycles through the model's classes itself (see --samples)")
    if "nfc" in given and cfg.budget:
        raise RfcacheError("--nfc: --budget replaces --nfc; give one of them")
    if "calibrate_trials" in given and cfg.methods is not None and "static" not in cfg.methods:
        raise RfcacheError("--calibrate-trials applies to the static method only; add static to --methods")
    if "tune_samples" in given and cfg.methods:
        from rfcache.evaluate.bench import DEFAULT_METHODS, swept_methods

        if not swept_methods(cfg.methods):
            swept = ", ".join(swept_methods(DEFAULT_METHODS))
            raise RfcacheError(
                f"--tune-samples applies to the methods whose knob is swept to match a cost ({swept}); "
                "none of --methods is one"
            )


def _sets_run(cfg: BenchCommandConfig) -> bool:
    """Whether any run flag other than --steps was given (the workload's own arguments apply otherwise)."""
    given = (cfg.prompt, cfg.prompts, cfg.negative_prompt, cfg.class_labels, cfg.height, cfg.width, cfg.num_frames)
    return any(v not in (None, ()) for v in given) or cfg.guidance is not None or cfg.call_args is not None


def report(cfg: BenchCommandConfig, outcome) -> str:
    from rfcache.evaluate.tables import format_table

    result, written = outcome
    head = (
        f"{result.model}: {result.steps} steps, {result.samples} samples; FLOP frac measured (FlopCounterMode, "
        "transformer), speed-up measured (wall clock), quality against full compute of the same seeds "
        "(rel-L2: mean per sample, 95% bootstrap interval; vs ref: paired per-sample ratio, 'lower'/'higher' "
        "only where its interval excludes 1)"
    )
    return "\n".join([head, format_table(result), *(f"wrote {p}" for p in written)])


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser(
        "bench", help="compare caching methods at matched FLOPs", description=__doc__, epilog=EXAMPLES
    )
