"""Optuna storages for a run: SQLite (default), a journal file (parallel workers on one host), or any
RDB URL such as PostgreSQL (several machines). Passwords never leave the process.

Usage: ``storage = open_storage(resolve_storage(record, run_dir))``

Why these: Optuna advises against SQLite for parallel writers (no ``SELECT ... FOR UPDATE``,
"database is locked"), so ``run --workers N`` on a new run directory uses a journal file
(``JournalFileBackend``, append-only with file locks, made for several processes on one host),
and several machines share a PostgreSQL database. RDB storages get Optuna's heartbeat, so a trial
whose worker vanished on another machine is failed after the grace period and then re-run.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages.journal import JournalFileBackend

from normfree_bench.errors import UserError

DB_FILE = "study.db"
JOURNAL_FILE = "study.journal"
JOURNAL = "journal"  # config.yaml marker: the run directory's own journal file
HEARTBEAT_S = 30
GRACE_S = 120
_PASSWORD = re.compile(r"(://[^:/@]+:)([^@]*)(@)")


def redact(url: str | None) -> str | None:
    """The URL with any password replaced by ``***``."""
    return _PASSWORD.sub(r"\1***\3", url) if url else url


def resolve_storage(record: dict[str, Any], run_dir: Path, given: str | None = None) -> str:
    """The storage URL of a run: the one recorded in config.yaml, where ``null`` means the run
    directory's own study.db and ``journal`` its own study.journal (so a moved or copied run directory
    keeps reading its own database). ``given`` (--storage) is accepted only where it names the recorded
    storage, the only way to pass a password that is never stored; another storage is a `UserError`,
    so that no command reads or writes a run's trials in a database that is not the run's."""
    stored = record.get("storage")
    if stored is None or stored == JOURNAL:
        own = f"sqlite:///{(run_dir / DB_FILE).resolve()}" if stored is None else \
            f"journal:///{(run_dir / JOURNAL_FILE).resolve()}"
        if given and given != own:
            name = DB_FILE if stored is None else JOURNAL_FILE
            raise UserError(f"run {run_dir} keeps its trials in its own {name}, not in {redact(given)}; "
                            "leave out --storage (it is only for runs created with a database URL)")
        return own
    if given:
        if redact(given) != stored:
            raise UserError(f"--storage {redact(given)} is not the storage of run {run_dir} ({stored}); "
                            "a run directory keeps the storage it was created with")
        return given
    if "***" in stored:
        raise UserError(f"run {run_dir} uses the storage {stored}, whose password is not stored; "
                        "pass it again with --storage URL")
    return stored


def in_memory(url: str) -> bool:
    """An SQLite database that lives in memory only (``sqlite://``, ``sqlite:///:memory:``)."""
    return url.startswith("sqlite") and (url.rstrip("/") in ("sqlite:", "sqlite://") or ":memory:" in url
                                         or "mode=memory" in url)


def storage_file(url: str) -> Path | None:
    """The file an SQLite or journal URL names (None for a database server)."""
    if url.startswith("journal:///"):
        return Path(url.removeprefix("journal://"))
    if url.startswith("sqlite:///"):  # sqlite:///relative.db or sqlite:////absolute.db
        return Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    return None


def check_url(url: str) -> None:
    """A storage URL's form, checked without connecting: malformed or in-memory is a `UserError`."""
    shown = redact(url)
    if in_memory(url):
        raise UserError(f"storage {shown!r} is an in-memory database: every trial would be lost when the process "
                        "ends; valid: a file (sqlite:///path/study.db), or a database server URL")
    if url.startswith("journal:///"):
        return
    try:
        sqlalchemy.engine.make_url(url).get_dialect()
    except sqlalchemy.exc.ArgumentError as exc:
        raise UserError(f"malformed storage URL {shown!r}; valid: an SQLAlchemy URL such as "
                        "sqlite:///study.db or postgresql+psycopg://user:pass@host/db") from exc


def open_storage(url: str, heartbeat: bool = True, create: bool = True) -> optuna.storages.BaseStorage:
    """Open ``url`` (SQLAlchemy URL or ``journal:///path``); bad or unreachable URLs are `UserError`s.
    An in-memory database is refused (every trial would be lost); with ``create=False`` a database
    file that does not exist is refused instead of created empty."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    shown = redact(url)
    check_url(url)
    path = storage_file(url)
    if path is not None and not create and not path.is_file():
        raise UserError(f"the study database {path} does not exist; valid: the storage a run was created with")
    if url.startswith("journal:///"):
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise UserError(f"cannot open the journal storage {path}: {exc.strerror}") from exc
    kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    if heartbeat:
        kwargs.update(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except sqlalchemy.exc.ArgumentError as exc:
        raise UserError(f"malformed storage URL {shown!r}; valid: an SQLAlchemy URL such as "
                        "sqlite:///study.db or postgresql+psycopg://user:pass@host/db") from exc
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DBAPIError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if getattr(exc, "orig", None) else type(exc).__name__
        raise UserError(f"cannot reach the database at {shown!r}: {redact(reason)}") from exc
    except (ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"storage URL {shown!r} needs a database driver that is not installed: {exc}; "
                        "for PostgreSQL: pip install 'normfree-bench[postgres]'") from exc
