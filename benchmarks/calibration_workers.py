"""One `rfc-calibrate` worker against several sharing one study: trials per worker and wall time.

Each run is a real calibration of the embedded model (recording, search, held-out confirmation)
by real worker processes, one thread each. Both runs use fresh studies in the same storage.

    python benchmarks/calibration_workers.py --storage study.journal --trials 24 --workers 2
    python benchmarks/calibration_workers.py --storage postgresql+psycopg://user@/db?host=/tmp/pg
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna

from rfcache.calibrate.storage import open_storage


def run(storage: str, study: str, workers: int, args: argparse.Namespace, out: Path) -> tuple[float, Counter]:
    """Start ``workers`` processes on one study; wall seconds until the last ends, trials per worker."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rfcache.cli.main", "calibrate", "--storage", storage, "--study", study]
    command += ["--trials", str(args.trials), "--steps", str(args.steps), "--samples", str(args.samples)]
    command += ["--test", str(args.test), "--budget", str(args.budget), "--no-json"]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*command, "--out", str(out / f"{study}-{i}.yaml")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a worker of {study} failed with code {proc.returncode}")
    seconds = time.perf_counter() - start
    trials = optuna.load_study(study_name=study, storage=open_storage(storage)).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return seconds, Counter(t.user_attrs.get("worker", "?") for t in done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=None, help="database URL or journal file (default: a temp journal)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--budget", type=float, default=0.4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        storage = args.storage or str(out / "study.journal")
        tag = time.strftime("%H%M%S")
        rows = [("1 worker", *run(storage, f"one-{tag}", 1, args, out))]
        rows.append((f"{args.workers} workers", *run(storage, f"many-{tag}", args.workers, args, out)))
    kind = storage.split("://")[0] if "://" in storage else "journal file"
    print(f"storage {kind}; {args.trials} trials, {args.steps} steps, {args.samples} inputs; {os.cpu_count()} CPUs")
    print(f"{'run':<12} {'wall s':>8} {'trials':>7}  trials per worker")
    for name, seconds, per_worker in rows:
        print(f"{name:<12} {seconds:>8.1f} {sum(per_worker.values()):>7}  {sorted(per_worker.values(), reverse=True)}")
    print(f"speed-up {rows[0][1] / rows[1][1]:.2f}x (wall time, whole calibration incl. each worker's recording)")


if __name__ == "__main__":
    main()
