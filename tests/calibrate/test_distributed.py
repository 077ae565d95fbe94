"""Several `rfc-calibrate` workers share one Optuna study: PostgreSQL, SQLite and a journal file."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter

import optuna
import pytest

import rfcache
from rfcache.calibrate.storage import StorageError, open_storage
from tests.calibrate.conftest import TINY_RUN, calibrate_command, study_trials, worker_env
from tests.conftest import full_only

TRIALS = 150  # error-model trials take ~0.1 s: enough that a worker starting seconds late still gets some


def _storage(kind: str, tmp_path, request) -> str:
    if kind == "postgresql":
        return request.getfixturevalue("postgres_url")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return str(tmp_path / "study.journal")


_POP = """
import sys
import optuna
from rfcache.calibrate.storage import open_storage
study = optuna.load_study(study_name="queue", storage=open_storage(sys.argv[1]))
popped = []
while (trial_id := study._pop_waiting_trial_id()) is not None:
    popped.append(trial_id)
print(*popped)
"""


@pytest.mark.parametrize(
    "kind", [pytest.param("postgresql", marks=full_only("PostgreSQL locks rows itself (FOR UPDATE)")), "sqlite"]
)
def test_workers_never_pop_the_same_enqueued_trial(kind, tmp_path, request):
    """SQLite ignores Optuna's SELECT ... FOR UPDATE: without a write lock at the start of each
    transaction two workers took the same enqueued trial (16 of 300 here) and one then failed."""
    storage = _storage(kind, tmp_path, request)
    study = optuna.create_study(study_name="queue", storage=open_storage(storage))
    for i in range(300):
        study.enqueue_trial({"x": i})
    workers = [
        subprocess.Popen([sys.executable, "-c", _POP, storage], stdout=subprocess.PIPE, text=True, env=worker_env())
        for _ in range(2)
    ]
    popped = [[int(t) for t in w.communicate(timeout=600)[0].split()] for w in workers]
    assert all(w.returncode == 0 for w in workers)
    assert sorted(popped[0] + popped[1]) == sorted(t._trial_id for t in study.trials)


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
    # workers draw their own random trials: with one seed their first sampled trials would repeat
    sampled = {w: [t.params for t in complete if t.user_attrs["worker"] == w and "fixed_params" not in t.system_attrs]
               for w in per_worker}  # fmt: skip
    first, second = (runs[:3] for runs in sampled.values())
    assert first != second, sampled
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


def _fresh_database(url: str, name: str) -> str:
    """A new, empty database on the server ``url`` points at; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    where = {"host": u.query.get("host") or u.host, "port": u.port, "user": u.username, "password": u.password}
    with psycopg.connect(dbname=u.database or "postgres", autocommit=True, **where) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return u.set(database=name).render_as_string(hide_password=False)


def test_workers_starting_together_on_a_fresh_database_all_open_it(postgres_url):
    """Each worker creates Optuna's tables if missing; on a fresh database they race, all must win."""
    url = _fresh_database(postgres_url, "race")
    barrier = threading.Barrier(6, timeout=60)
    errors: list[str] = []

    def worker() -> None:
        barrier.wait()  # all at once, each on its own connection
        try:
            optuna.create_study(study_name="race", storage=open_storage(url), load_if_exists=True)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
