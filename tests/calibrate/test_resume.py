"""A calibration killed with SIGKILL resumes with the same command: real processes, real kills."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import optuna
import pytest

import rfcache
from rfcache.calibrate import Trace, record_shard
from rfcache.calibrate.search import FAMILIES, search_schedules
from rfcache.calibrate.storage import open_storage
from tests.calibrate.conftest import TINY_RUN, calibrate_command, study_trials, wait_until, worker_env

COMPLETE, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())


def _finish(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=worker_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_search_killed_mid_study_loses_only_the_trials_in_flight(tmp_path):
    storage, study, trials = f"sqlite:///{tmp_path / 'study.db'}", "crash", 10
    out = tmp_path / "profile.yaml"
    command = calibrate_command("--storage", storage, "--study", study, "--trials", str(trials), "--out", str(out))
    command += TINY_RUN
    proc = _start(command)
    wait_until(lambda: sum(t.state == COMPLETE for t in study_trials(storage, study)) >= 3, proc)
    _kill(proc)

    at_kill = study_trials(storage, study)
    finished = {t.number: (t.params, t.value) for t in at_kill if t.state == COMPLETE}
    in_flight = [t.number for t in at_kill if t.state == RUNNING]
    assert len(finished) >= 3 and len(in_flight) <= 1 and not out.exists()

    _finish(command)  # the same command
    after = study_trials(storage, study)
    complete = {t.number: (t.params, t.value) for t in after if t.state == COMPLETE}
    # every trial finished before the kill is still there, unchanged, and was not run again
    assert all(complete[n] == finished[n] for n in finished)
    assert len(complete) == trials
    assert len(after) == trials + len(in_flight)  # the resumed run added exactly the missing trials
    profile = rfcache.load_profile(out)
    assert profile.budget.achieved <= 0.4 and profile.provenance.trials == len(complete)


@pytest.mark.slow
def test_recording_killed_mid_shard_resumes_from_the_last_complete_group(tmp_path):
    traces = tmp_path / "traces"
    recording = ("--shard", "0/1", "--trace-dir", str(traces), "--samples", "8", "--record-batch", "1")
    command = calibrate_command(*recording, "--steps", "20", "-v")
    proc = _start(command)
    wait_until(lambda: len(list(traces.glob("trace-0-of-1.part-*-of-8.npz"))) >= 2, proc)
    _kill(proc)

    written = len(list(traces.glob("trace-0-of-1.part-*-of-8.npz")))
    assert 2 <= written < 8 and not (traces / "trace-0-of-1.npz").exists()
    done = _finish(command)
    assert f"resuming trace-0-of-1.npz: {written} of 8 groups already recorded" in done.stderr
    assert f"group {written}/8" not in done.stderr and f"group {written + 1}/8" in done.stderr  # none redone
    assert not list(traces.glob("*.part-*"))  # the parts were merged into the shard

    # the resumed shard holds the same numbers as an uninterrupted recording
    fresh = record_shard(
        rfcache.load_pipeline("toy"),
        shard=0,
        num_shards=1,
        out_dir=tmp_path / "fresh",
        num_inference_steps=20,
        samples=8,
        group_size=1,
    )
    resumed, reference = Trace.load(traces / "trace-0-of-1.npz"), Trace.load(fresh)
    assert resumed.input_delta.shape == reference.input_delta.shape == (20, 12, 8, 16)
    np.testing.assert_allclose(resumed.input_delta, reference.input_delta, rtol=1e-5)
    np.testing.assert_allclose(resumed.output_delta, reference.output_delta, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_dead_workers_trial_is_failed_after_the_grace_period_and_retried(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="stale", storage=storage)
    orphan = study.ask()
    family = orphan.suggest_categorical("family", list(FAMILIES))
    storage.record_heartbeat(orphan._trial_id)  # its worker beat once, then died
    time.sleep(2.5)
    seen: list[dict] = []

    def evaluate(params):
        seen.append(params)
        return "C" * 10, 0.3, 0.1

    search_schedules(evaluate, budget=0.4, num_steps=10, trials=3, storage=storage, study_name="stale", progress=False)
    trials = study_trials(f"sqlite:///{tmp_path / 'study.db'}", "stale")
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert retried and retried[0].state == COMPLETE and retried[0].params["family"] == family
