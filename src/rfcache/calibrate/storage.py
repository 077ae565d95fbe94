"""Where a schedule search's Optuna study lives: one string names the storage.

- A SQLAlchemy URL (``sqlite:///study.db``, ``postgresql+psycopg://user@host/db``, ``mysql://...``)
  opens Optuna's ``RDBStorage`` with heartbeats: a trial left running by a killed worker is marked
  failed once its heartbeat is ``grace_period`` seconds old, and its parameters are queued again,
  so a crash costs the work of the trials in flight and nothing else. PostgreSQL is the storage for
  several machines; SQLite serves several processes on one machine.
- Anything without ``://`` is a file path: Optuna's journal file storage (several processes on one
  machine, no database; no heartbeats, so a killed worker's trial simply stays ``RUNNING`` and is
  not counted).
"""

from __future__ import annotations

import os
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from rfcache.errors import RfcacheError

__all__ = ["HEARTBEAT_INTERVAL_S", "StorageError", "open_storage", "worker_name"]

HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30  # a RUNNING trial silent for this long belongs to a dead worker


class StorageError(RfcacheError, ValueError):
    """The Optuna storage cannot be opened (bad URL, missing driver, unreachable server)."""


def open_storage(
    url: str,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    max_retry: int = 2,
) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage ``url`` names; a one-line :class:`StorageError` if it cannot."""
    try:
        if "://" not in url:
            path = Path(url).expanduser()
            _check_journal(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return _open_rdb(url, heartbeat_interval, grace_period, max_retry)
    except StorageError:
        raise
    except Exception as exc:  # any driver or URL error: one line, password hidden
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError) and url.startswith("postgresql"):
            first = "no PostgreSQL driver: pip install 'psycopg[binary]'"
        raise StorageError(f"storage {_safe(url)}: cannot open ({first})") from exc


def _check_journal(path: Path) -> None:
    """An existing journal file holds one JSON record per line; anything else is refused before Optuna
    appends to it (it reads past a bad last line, then fails once a record follows it). An unfinished
    last line (no newline yet) is a record being written and is left to Optuna."""
    import json

    if not path.exists():
        return
    if not path.is_file():
        raise StorageError(f"storage {path}: not a journal file (a folder or a device)")
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or not line.endswith(b"\n"):  # blank, or a record another worker is writing
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or "op_code" not in record:
                raise StorageError(
                    f"storage {path}: line {number} is not an Optuna journal record; the file is left as it is"
                )


def _open_rdb(url: str, heartbeat_interval: int, grace_period: int, max_retry: int) -> optuna.storages.RDBStorage:
    """``RDBStorage``, retried a few times: workers starting together on a fresh database race to
    create Optuna's tables, and all but one see a duplicate-key or duplicate-table error once."""
    import sqlalchemy.exc

    sqlite = url.startswith("sqlite")
    # pysqlite's own transaction handling off (isolation_level None): _serialise_sqlite begins each one
    engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {}
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; we rely on them knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    **_retry_callback(max_retry),
                )
            if sqlite:
                _serialise_sqlite(storage.engine)
            return storage
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            # SQLite reports the race as an OperationalError "table ... already exists"
            racing = not isinstance(exc, sqlalchemy.exc.OperationalError) or "already exists" in str(exc)
            if not racing or attempt == _CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


_CREATE_ATTEMPTS = 5


def _serialise_sqlite(engine: Any) -> None:
    """Begin every SQLite transaction with ``BEGIN IMMEDIATE`` (the write lock first).

    SQLite ignores Optuna's ``SELECT ... FOR UPDATE``, and pysqlite begins a transaction only at
    the first write, so two workers could both read an enqueued trial as WAITING and both run it
    (the second then fails with "Cannot tell a COMPLETE trial"). Taking the lock at the start makes
    the read and the write one step; the others wait (``timeout``).
    """
    import sqlalchemy

    sqlalchemy.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))


def worker_name() -> str:
    """``host:pid`` of this process, recorded on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _retry_callback(max_retry: int) -> dict[str, object]:
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry)}


def _safe(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"
