"""Kill `rfc-calibrate` with SIGKILL at random moments, rerun the same command, count what was lost.

Search: the worker is killed once the study holds a random number of complete trials; "lost"
counts trials that had completed before the kill but are missing after it (the claim: none), "in
flight" the trials left running (their work is what a kill costs). Recording: a shard recorded one
input per group is killed after a random number of groups; the rerun must record only the rest.

    python benchmarks/crash_resume.py --runs 5 --storage sqlite
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from rfcache.calibrate.storage import open_storage

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMPLETE, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rfcache.cli.main", "calibrate", *args]


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=open_storage(storage)).trials
    except KeyError:
        return []


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool]) -> None:
    while not ready():
        if proc.poll() is not None:
            raise SystemExit("the worker finished before the kill; use more trials or groups")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def search_run(tmp: Path, storage_kind: str, trials: int, rng: random.Random, run: int) -> dict:
    storage = f"sqlite:///{tmp / f'study{run}.db'}" if storage_kind == "sqlite" else str(tmp / f"study{run}.journal")
    study, at = f"crash{run}", rng.randint(1, trials - 2)
    command = _cli("--storage", storage, "--study", study, "--trials", str(trials), "--steps", "20")
    command += ["--samples", "4", "--selection", "1", "--test", "2", "--out", str(tmp / f"p{run}.yaml")]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: sum(t.state == COMPLETE for t in _trials(storage, study)) >= at)
    before = {t.number: t.params for t in _trials(storage, study) if t.state == COMPLETE}
    in_flight = sum(t.state == RUNNING for t in _trials(storage, study))
    start = time.perf_counter()
    subprocess.run(command, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = {t.number: t.params for t in _trials(storage, study) if t.state == COMPLETE}
    lost = sum(after.get(n) != p for n, p in before.items())
    return {
        "complete at kill": len(before),
        "in flight": in_flight,
        "lost": lost,
        "run after resume": len(after) - len(before) + lost,
        "complete at end": len(after),
        "resume s": time.perf_counter() - start,
    }


def record_run(tmp: Path, rng: random.Random, run: int, groups: int = 8) -> dict:
    traces = tmp / f"traces{run}"
    at = rng.randint(1, groups - 2)
    command = _cli("--shard", "0/1", "--trace-dir", str(traces), "--samples", str(groups), "--record-batch", "1")
    command += ["--steps", "20", "-v"]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: len(list(traces.glob("*.part-*-of-*.npz"))) >= at)
    saved = len(list(traces.glob("*.part-*-of-*.npz")))
    done = subprocess.run(command, env=ENV, check=True, capture_output=True, text=True)
    recorded = {int(m) for m in re.findall(rf"group (\d+)/{groups}", done.stderr)}
    return {"groups saved at kill": saved, "recorded on resume": len(recorded), "groups": groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--storage", choices=["sqlite", "journal"], default="sqlite")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        searches = [search_run(Path(tmp), args.storage, args.trials, rng, i) for i in range(args.runs)]
        records = [record_run(Path(tmp), rng, i) for i in range(args.runs)]
    print(f"search killed with SIGKILL ({args.storage}, {args.trials} trials, 20 steps, 4 inputs), then resumed:")
    keys = list(searches[0])
    print("  ".join(f"{k:>16}" for k in keys))
    for row in searches:
        print("  ".join(f"{row[k]:>16.1f}" if isinstance(row[k], float) else f"{row[k]:>16}" for k in keys))
    print("\nrecording killed with SIGKILL (one shard, 8 groups of 1 input, 20 steps), then resumed:")
    keys = list(records[0])
    print("  ".join(f"{k:>20}" for k in keys))
    for row in records:
        print("  ".join(f"{row[k]:>20}" for k in keys))


if __name__ == "__main__":
    main()
