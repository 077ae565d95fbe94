"""Real `rfc-calibrate` worker processes, a throw-away PostgreSQL server, and reading a study back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

# a calibration small enough for a test: 10 steps, 2 inputs, 1 held-out input on the embedded model
TINY_RUN = ("--steps", "10", "--samples", "2", "--selection", "1", "--test", "1", "--no-json")


def calibrate_command(*args: str) -> list[str]:
    """The ``rfc-calibrate`` command line, run by this interpreter."""
    return [sys.executable, "-m", "rfcache.cli.main", "calibrate", *args]


def worker_env() -> dict[str, str]:
    """This process's environment, one thread per worker (the CI machine has two cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def study_trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of ``study`` as they are in the storage now (empty while the study does not exist)."""
    from rfcache.calibrate.storage import open_storage

    try:
        return optuna.load_study(study_name=study, storage=open_storage(storage)).trials
    except KeyError:
        return []


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, *, timeout: float = 600) -> None:
    """Poll ``condition`` until it holds; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"worker ended (code {proc.returncode}) before the awaited progress:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no progress within {timeout} s")
        time.sleep(0.05)


# -- a throw-away PostgreSQL server ---------------------------------------------------------------


def _pg_binaries() -> tuple[Path, Path] | None:
    """``initdb`` and ``pg_ctl``: on PATH, or where Debian's postgresql package puts them."""
    for folder in [None, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        initdb = shutil.which("initdb", path=None if folder is None else str(folder))
        pg_ctl = shutil.which("pg_ctl", path=None if folder is None else str(folder))
        if initdb and pg_ctl:
            return Path(initdb), Path(pg_ctl)
    return None


def _unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail where the run promised a server (CI sets RFCACHE_REQUIRE_POSTGRES=1)."""
    message = f"no PostgreSQL server could be started: {reason}"
    if os.environ.get("RFCACHE_REQUIRE_POSTGRES") == "1":
        pytest.fail(message + " (RFCACHE_REQUIRE_POSTGRES=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh PostgreSQL database on a unix socket, removed afterwards.

    ``RFCACHE_TEST_POSTGRES_URL`` points the tests at an existing server instead. initdb refuses to
    run as root, so as root the server runs as the ``postgres`` user the distribution's package made.
    """
    if url := os.environ.get("RFCACHE_TEST_POSTGRES_URL"):
        yield url
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is missing (pip install 'psycopg[binary]', in the dev extra)")
    binaries = _pg_binaries()
    if binaries is None:
        _unavailable("initdb/pg_ctl not found (apt-get install postgresql)")
    initdb, pg_ctl = binaries
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None or subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode != 0:
            _unavailable("running as root without a 'postgres' user and runuser to start the server as")
        prefix = [runuser, "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="rfcache-pg-"))  # short: a unix socket path has ~100 characters
    data = home / "data"
    if prefix:
        shutil.chown(home, user="postgres")
    started = False
    try:
        steps = [
            [*prefix, str(initdb), "-D", str(data), "-A", "trust", "-U", "rfcache", "--no-sync", "-E", "UTF8"],
            [
                *prefix,
                str(pg_ctl),
                "-D",
                str(data),
                "-w",
                "-t",
                "60",
                "-l",
                str(home / "server.log"),
                "-o",
                f"-k {home} -c listen_addresses='' -F",
                "start",
            ],
        ]
        for command in steps:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=home)  # a cwd it may read
            if done.returncode != 0:
                log = (home / "server.log").read_text() if (home / "server.log").exists() else ""
                lines = (done.stderr + log).strip().splitlines() or ["no output"]
                _unavailable(f"{Path(command[len(prefix)]).name} failed: {lines[-1]}")
            started = command is steps[-1]
        yield f"postgresql+psycopg://rfcache@/postgres?host={home}"
    finally:
        if started:
            stop = [*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"]
            subprocess.run(stop, capture_output=True, cwd=home)
        shutil.rmtree(home, ignore_errors=True)
