"""``rfc-calibrate``: calibrate a static cache schedule within a FLOP budget and write a profile."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import dtype_option, option, torch_dtype
from rfcache.cli._run import RunFlags, run_spec
from rfcache.outputs import check_file_output, check_folder_output

__all__ = ["CalibrateConfig", "check_flags", "resume_hint", "run_calibrate"]

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  rfc-calibrate --budget 0.4                                  # embedded model -> profile.yaml
  rfc-calibrate --budget 0.25 --trials 400 --out toy-b0.25.yaml
  rfc-calibrate --model ./my-pixart --prompts prompts.txt --steps 20 --height 512 --width 768 \
      --call-args '{"use_resolution_binning": false}' --device cuda --out pixart.yaml
  rfc-calibrate --model ./my-wan --prompts prompts.txt --steps 30 --height 480 --width 832 --num-frames 33
  # 20 distinct prompts are needed for --samples 8 --selection 4 --test 8 (or --allow-overlap)
  # record on two machines, then calibrate from the merged traces:
  rfc-calibrate --shard 0/2 --trace-dir traces/   # and --shard 1/2 elsewhere
  rfc-calibrate --trace-dir traces/ --budget 0.4
  # several workers sharing one study (run the same command on each machine):
  rfc-calibrate --storage postgresql+psycopg://user@db/rfcache --study pixart-b0.4 --trials 200
  # several workers on one machine, no database server (a journal file):
  rfc-calibrate --storage study.journal --study toy-b0.4 --trials 48 --out worker1.yaml
"""


@dataclass(frozen=True)
class CalibrateConfig(RunFlags):
    model: str = option("toy", "'toy', 'toy-flux', a local pipeline folder, or a hub id")
    budget: float = option(0.4, "share of the module FLOPs the schedule may spend, in (0, 1]", above=0, at_most=1)
    trials: int = option(
        200, "Optuna trials, scored by the error model (a resumed study counts its finished ones)", at_least=1
    )
    confirm: int = option(4, "best candidates by estimate confirmed by real runs on the calibration inputs", at_least=0)
    storage: str | None = option(
        None, "Optuna storage: a database URL, or a journal file path (default: sqlite file beside --out)"
    )
    study: str | None = option(None, "Optuna study name (default: derived from model, steps, budget)")
    out: Path = option(Path("profile.yaml"), "profile to write")
    samples: int = option(8, "calibration inputs (recording, fits, search, confirmation runs)", at_least=1)
    selection: int = option(4, "selection inputs: choose among the confirmed candidates", at_least=1)
    test: int = option(8, "test inputs: reported only, never used for a choice", at_least=1)
    allow_overlap: bool = option(False, "let prompts repeat across the three input sets when the prompt file is short")
    device: str = option("cpu", "torch device")
    dtype: str = dtype_option("the pipeline is loaded and calibrated in (recorded in the profile's provenance)")
    shard: str | None = option(None, "record only shard i/n of the calibration inputs into --trace-dir, then stop")
    trace_dir: Path | None = option(None, "folder of trace shards: written with --shard, merged without it")
    record_batch: int | None = option(
        None,
        "inputs per pipeline call while recording (bounds memory; default: all at once, 4 per group for a "
        "--shard, where each finished group is saved so a killed run resumes)",
        at_least=1,
    )
    per_unit: bool = option(
        True, "also search per-unit schedules (one C/P row per unit or group; one transformer only)"
    )
    max_step_kinds: int | None = option(
        None, "per-unit schedules: at most this many distinct step kinds (default: unlimited)", at_least=2
    )
    local_moves: int = option(
        0,
        "per-unit schedules: this many moves of one unit's full step from the best step mask, each one real run "
        "on the calibration inputs, kept where the error drops (the unit-local candidate; 0: none)",
        at_least=0,
    )
    json: bool = option(False, "print one JSON object as the last line")


def _check_flags_and_outputs(cfg: CalibrateConfig, spec: Any) -> tuple[int, int] | None:
    """Refuse what would fail late (budget, flags, every output path); returns the parsed ``--shard``."""
    from rfcache.calibrate.search import check_budget
    from rfcache.errors import RfcacheError

    check_budget(cfg.budget, name="--budget")  # before the model is loaded; calibrate() applies the same rule
    if cfg.shard is None and cfg.budget < 1 / spec.steps:  # the first step is always computed
        raise RfcacheError(
            f"--budget {cfg.budget:g} is below the cheapest schedule: its one full step of {spec.steps} alone "
            f"costs {1 / spec.steps:.3g} of module FLOPs (predictions add more); give --budget {1 / spec.steps:.3g} "
            "or more, or more --steps"
        )
    if spec.class_labels:
        raise RfcacheError("--class: rfc-calibrate picks class labels itself (see --samples)")
    if cfg.local_moves and not cfg.per_unit:
        raise RfcacheError("--local-moves makes per-unit candidates: it contradicts --no-per-unit")
    shard = _parse_shard(cfg.shard) if cfg.shard is not None else None
    if shard is not None and cfg.trace_dir is None:
        raise RfcacheError("--shard needs --trace-dir (where the shard is written)")
    if cfg.record_batch is not None and cfg.record_batch < 1:
        raise RfcacheError(f"--record-batch must be >= 1, got {cfg.record_batch}")
    if shard is not None:  # the folder the shard is written into, before anything is recorded
        check_folder_output(cfg.trace_dir, flag="--trace-dir", ours=None)
    else:  # every output before any work: the profile, and the storage (a file beside it by default)
        check_file_output(cfg.out, flag="--out", suffixes=(".yaml", ".yml"), what="profile file")
        if cfg.storage is not None:
            _check_storage_path(cfg.storage)
    return shard


def run_calibrate(cfg: CalibrateConfig) -> dict[str, Any]:
    """Calibrate, write the profile atomically, and return the closing figures."""
    from rfcache.calibrate import calibrate, load_shards, record_shard
    from rfcache.errors import RfcacheError
    from rfcache.pipelines import load_pipeline

    spec = run_spec(cfg)
    shard = _check_flags_and_outputs(cfg, spec)  # before the model is loaded or anything written
    # merged traces are checked before the storage is opened (which may create a database file)
    trace = load_shards(cfg.trace_dir) if shard is None and cfg.trace_dir is not None else None
    pipe = load_pipeline(cfg.model, device=cfg.device, dtype=torch_dtype(cfg.dtype))
    pipe.set_progress_bar_config(disable=True)
    # the same calibration inputs, whether recorded here or in shards
    inputs = {"run": spec, "samples": cfg.samples}
    if shard is not None:
        group = cfg.record_batch or 4
        path = record_shard(
            pipe, shard=shard[0], num_shards=shard[1], out_dir=cfg.trace_dir, group_size=group, **inputs
        )
        return {"trace": str(path), "json": cfg.json}
    if cfg.storage is None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
    database = default_database(cfg.out)
    storage = cfg.storage or f"sqlite:///{database}"
    created = cfg.storage is None and not database.exists()
    journal = Path(cfg.storage).expanduser() if cfg.storage is not None and "://" not in cfg.storage else None
    journal_created = journal is not None and not journal.exists()
    try:
        resuming = _check_storage(storage, cfg.study)
    except RfcacheError:
        if created:
            database.unlink(missing_ok=True)
        if journal_created:
            journal.unlink(missing_ok=True)  # type: ignore[union-attr]
        raise
    if resuming:
        print(resuming, file=sys.stderr, flush=True)
    import optuna

    if not logging.getLogger().isEnabledFor(logging.INFO):
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says enough
    try:
        result = calibrate(
            pipe,
            budget=cfg.budget,
            selection=cfg.selection,
            test=cfg.test,
            allow_overlap=cfg.allow_overlap,
            trials=cfg.trials,
            confirm=cfg.confirm,
            storage=storage,
            study_name=cfg.study,
            name=cfg.out.stem if cfg.out.suffix in (".yaml", ".yml") else cfg.out.name,
            trace=trace,
            record_batch=cfg.record_batch,
            report=lambda line: print(line, file=sys.stderr, flush=True),
            per_unit=cfg.per_unit,
            max_step_kinds=cfg.max_step_kinds,
            local_moves=cfg.local_moves,
            **inputs,
        )
    except RfcacheError:
        if created:  # a study that never got a trial is not left behind
            database.unlink(missing_ok=True)
        raise
    return _figures(cfg, result, result.profile.save(cfg.out), storage)


def _figures(cfg: CalibrateConfig, result: Any, path: Path, storage: str) -> dict[str, Any]:
    """The closing figures of a calibration whose profile was written to ``path``."""
    p = result.profile
    return {
        "profile": str(path),
        "budget_target": cfg.budget,
        "flops_fraction": p.budget.achieved,
        "nfc": p.nfc,
        "num_steps": p.sampling.num_steps,
        "schedule": p.schedule,
        "method": f"{p.method.predictor} m={p.method.order}, {p.method.schedule_family}",
        "test_rel_l2": result.test.value,
        "test_rel_l2_ci95": result.test.ci95,
        "taylorseer_rel_l2": result.taylorseer.value,
        "taylorseer_rel_l2_ci95": result.taylorseer.ci95,
        "taylorseer_nfc": int(p.quality["taylorseer_nfc"]),
        "ratio_to_taylorseer": result.ratio.value,
        "ratio_to_taylorseer_ci95": result.ratio.ci95,
        "verdict": result.ratio.verdict(),
        "inputs": {name: len(items) for name, items in result.inputs.as_dict().items()},
        "seconds": round(result.seconds, 1),
        "trials": p.provenance.trials,
        "errmodel_spearman_out_of_sample": p.diagnostics.get("errmodel_spearman_out_of_sample"),
        "errmodel_r2_out_of_sample": p.diagnostics.get("errmodel_r2_out_of_sample"),
        "errmodel_out_of_sample_runs": int(p.diagnostics.get("errmodel_out_of_sample_runs", 0)),
        "errmodel_r2_in_sample": p.diagnostics.get("errmodel_r2_in_sample"),
        "confirmed": len(result.confirmed),
        "per_unit": p.per_unit,
        "selection_rel_l2_step_mask": p.diagnostics.get("selection_rel_l2_step_mask"),
        "selection_rel_l2_per_unit": p.diagnostics.get("selection_rel_l2_per_unit"),
        "storage": storage,
        "json": cfg.json,
    }


def report(cfg: CalibrateConfig, r: dict[str, Any]) -> str:
    if "trace" in r:
        return f"wrote {r['trace']}" + (f"\n{json.dumps({'trace': r['trace']})}" if r.pop("json") else "")
    n = r["inputs"]
    verdict = {"lower": "lower than TaylorSeer's", "higher": "higher than TaylorSeer's", "tie": "no clear difference"}
    lines = [
        f"wrote {r['profile']}",
        f"budget            target {r['budget_target']:.3f}, achieved {r['flops_fraction']:.3f} of module FLOPs",
        f"schedule          {r['schedule']}  (NFC {r['nfc']} of {r['num_steps']}; {r['method']})",
        f"inputs            {n['calibration']} calibration, {n['selection']} selection, {n['test']} test "
        "(disjoint seeds; test inputs only reported)",
        f"test rel-L2       {_ci(r['test_rel_l2'], r['test_rel_l2_ci95'])} profile vs "
        f"{_ci(r['taylorseer_rel_l2'], r['taylorseer_rel_l2_ci95'])} TaylorSeer m=2 at NFC {r['taylorseer_nfc']} "
        "(mean per sample, 95% interval)",
        f"paired ratio      {_ci(r['ratio_to_taylorseer'], r['ratio_to_taylorseer_ci95'], '.2f', 'x')} "
        f"profile / TaylorSeer per test sample: {verdict[r['verdict']]}",
        f"error model       out of sample (the {r['errmodel_out_of_sample_runs']} confirmed candidates it was not "
        f"fitted on): Spearman {_num(r['errmodel_spearman_out_of_sample'])}, R² {_num(r['errmodel_r2_out_of_sample'])}"
        f" of log errors; in-sample R² {_num(r['errmodel_r2_in_sample'])}",
        f"time              {r['seconds']:.1f} s, {r['trials']} trials in {r['storage']}",
    ]
    if r["selection_rel_l2_per_unit"] is not None:
        won = "per-unit" if r["per_unit"] else "step mask"
        lines.insert(
            3,
            f"family            {won} won on the selection inputs: rel-L2 {r['selection_rel_l2_step_mask']:.4f} "
            f"step mask vs {r['selection_rel_l2_per_unit']:.4f} per-unit (best of each)",
        )
    if r.pop("json"):
        lines.append(json.dumps(r))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ci(value: float, ci95: list[float | None], spec: str = ".4f", unit: str = "") -> str:
    """``value [low, high]``, or the value alone where the interval is undefined (one sample)."""
    if None in ci95:
        return f"{value:{spec}}{unit}"
    return f"{value:{spec}}{unit} [{ci95[0]:{spec}}, {ci95[1]:{spec}}]"


def _parse_shard(text: str) -> tuple[int, int]:
    from rfcache.errors import RfcacheError

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise RfcacheError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise RfcacheError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def default_database(out: Path) -> Path:
    """The SQLite file beside ``--out`` that holds the study when no ``--storage`` is given."""
    return out.with_suffix(".optuna.db")


def _check_storage_path(storage: str) -> None:
    """A journal file (or a ``sqlite:///`` file) the user named can be written, before any work."""
    if "://" not in storage:
        check_file_output(Path(storage).expanduser(), flag="--storage", what="journal file")
    elif storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        check_file_output(Path(storage[len("sqlite:///") :]), flag="--storage", what="database file")


def _check_storage(url: str, study: str | None) -> str | None:
    """Open the storage (one line naming ``--storage`` if it cannot be); a line saying what is being
    resumed when it already holds finished trials of the study (or of its only study)."""
    from rfcache.calibrate.storage import StorageError, open_storage

    try:
        storage = open_storage(url)
        import optuna

        names = [name for name in optuna.get_all_study_names(storage) if study is None or name == study]
        if len(names) != 1:
            return None
        found = optuna.load_study(study_name=names[0], storage=storage)
        done = len(found.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    except StorageError as exc:
        raise StorageError(f"--{exc}") from exc.__cause__
    except Exception as exc:  # a journal or database that Optuna cannot read
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"--storage {url}: cannot read the studies in it ({first}); left as it is") from None
    if not done:
        return None
    return f"resuming study {names[0]!r} in {url}: {done} finished trials kept (--trials counts them)"


def check_flags(cfg: CalibrateConfig, given: set[str]) -> None:
    """``--shard`` only records a trace: the search's flags would be ignored."""
    from rfcache.errors import RfcacheError

    if cfg.shard is None:
        return
    unused = (
        "budget",
        "trials",
        "confirm",
        "storage",
        "study",
        "out",
        "selection",
        "test",
        "allow_overlap",
        "per_unit",
        "max_step_kinds",
        "local_moves",
    )
    for name in unused:
        if name in given:
            flag = "--" + name.replace("_", "-")
            raise RfcacheError(f"{flag}: --shard only records a trace into --trace-dir; give {flag} when merging")


def resume_hint(cfg: CalibrateConfig) -> str:
    """What to run after Ctrl-C."""
    if cfg.shard is not None:
        return "run the same command again: the groups already recorded in --trace-dir are kept"
    storage = cfg.storage or f"sqlite:///{default_database(cfg.out)}"
    return f"run the same command again to resume the study in {storage}"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("calibrate", help="calibrate a cache profile", description=__doc__, epilog=EXAMPLES)
