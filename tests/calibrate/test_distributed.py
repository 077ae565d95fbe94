"""Several `rfc-calibrate` workers share one Optuna study: PostgreSQL, SQLite and a journal file."""

from __future__ import annotations

import subprocess
from collections import Counter

import optuna
import pytest

import rfcache
from rfcache.calibrate.storage import StorageError, open_storage
from tests.calibrate.conftest import TINY_RUN, calibrate_command, study_trials, worker_env

TRIALS = 10  # enough that a worker starting a few seconds late still gets trials


def _storage(kind: str, tmp_path, request) -> str:
    if kind == "postgresql":
        return request.getfixturevalue("postgres_url")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return str(tmp_path / "study.journal")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "sqlite", "journal"])
def test_two_workers_share_one_study(kind, tmp_path, request):
    storage = _storage(kind, tmp_path, request)
    study = f"two-workers-{kind}"
    common = ("--storage", storage, "--study", study, "--trials", str(TRIALS), *TINY_RUN)
    workers = [
        subprocess.Popen(
            calibrate_command(*common, "--out", str(tmp_path / f"worker{i}.yaml")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        for i in (0, 1)
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    trials = study_trials(storage, study)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    per_worker = Counter(t.user_attrs["worker"] for t in complete)
    assert len(per_worker) == 2 and min(per_worker.values()) >= 1, per_worker  # both contributed
    # each worker stops once the study holds TRIALS complete trials; the other may finish one in flight
    assert TRIALS <= len(complete) <= TRIALS + 1
    assert len(trials) == len(complete)  # nothing failed or was left running
    # workers draw their own random trials: no parameter set was evaluated twice
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == len(params)
    for i in (0, 1):
        profile = rfcache.load_profile(tmp_path / f"worker{i}.yaml")
        assert len(profile.schedule) == 10 and profile.budget.achieved <= 0.4
        assert TRIALS <= profile.provenance.trials <= len(trials)


def test_bad_storages_are_one_line_errors(tmp_path):
    with pytest.raises(StorageError, match=r"^storage nosuchdb://x: cannot open \(") as info:
        open_storage("nosuchdb://x")
    assert "\n" not in str(info.value)
    with pytest.raises(StorageError, match=r"user:\*\*\*@") as info:
        open_storage("postgresql+psycopg://user:secret@127.0.0.1:1/db")  # nothing listens on port 1
    assert "secret" not in str(info.value) and "\n" not in str(info.value)
