"""Where the archive's SQL runs: chDB in a folder (embedded) or a ClickHouse server.

One small interface, `Engine`, with two implementations:

- `ChdbEngine(folder)`: ClickHouse in this process (chDB, the ``archive`` extra). chDB
  lets one process use a data folder at a time, so the folder is ``flock``ed
  (``archive.lock``) and a second process gets a clear error instead of chDB's own.
- `ServerEngine(url)`: a ClickHouse server or cluster through clickhouse-connect, for
  ``clickhouse://user@host:port/db``. The password comes from ``$CVAHASH_ARCHIVE_PASSWORD``
  or from a file named by ``$CVAHASH_ARCHIVE_PASSWORD_FILE`` that only its owner can read
  (mode 0600); a password inside the URL is refused (it would sit in shell history and in
  ``ps``).

Every value reaches SQL as a typed query parameter (``{name:Type}`` placeholders, bound
by the server), never by pasting text into a statement: a station called
``x'; DROP TABLE x; --`` is just a name. `Engine.query` returns a pyarrow Table;
`Engine.insert` takes one.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import CvahashError, InvalidArgument, MissingExtra

PASSWORD_ENV = "CVAHASH_ARCHIVE_PASSWORD"
PASSWORD_FILE_ENV = "CVAHASH_ARCHIVE_PASSWORD_FILE"
LOCK_FILE = "archive.lock"
CHDB_DATA = "chdb"
EXTRA_HINT = "pip install '.[archive]' in the cvahash checkout"


class ArchiveError(CvahashError):
    """The archive could not be opened, read or written."""


class Engine:
    """SQL with bound parameters, results as pyarrow Tables, bulk inserts of Tables."""

    target: str
    kind: str

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: dict[str, Any] | None = None):
        raise NotImplementedError

    def insert(self, table: str, data, settings: dict[str, int] | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------
# chDB: ClickHouse in this process


def _tsv_escape(text: str) -> str:
    """A String parameter as ClickHouse parses it (the escaped text format)."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\0", "\\0"))


def _quoted(text: str) -> str:
    return "'" + (text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
                  .replace("\t", "\\t").replace("\r", "\\r").replace("\0", "\\0")) + "'"


def chdb_param(value: Any) -> str:
    """A Python value as the text chDB hands to the server for a ``{name:Type}``
    parameter. chDB passes ``str(value)`` through, which would let a backslash in a
    station name turn into a tab: strings and lists are encoded here instead."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return _tsv_escape(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_quoted(v) if isinstance(v, str) else str(int(v))
                              for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


class ChdbEngine(Engine):
    """ClickHouse embedded in this process, its data in ``folder``/chdb."""

    kind = "chdb"

    def __init__(self, folder: str | os.PathLike, *, create: bool = True):
        try:
            from chdb import session  # optional: the [archive] extra
        except ImportError:
            raise MissingExtra(f"the archive needs chDB (embedded ClickHouse), which this "
                               f"install lacks: {EXTRA_HINT}") from None
        self.folder = Path(folder)
        self.target = str(self.folder)
        if not self.folder.is_dir():
            if not create:
                raise ArchiveError(f"{self.folder} is not an archive folder; make one with: "
                                   f"cvahash archive ingest FILE.cvaup --archive {self.folder}")
            if self.folder.exists():
                raise ArchiveError(f"{self.folder} exists and is not a folder; give --archive "
                                   "a folder (or clickhouse://user@host:port/db)")
            try:
                self.folder.mkdir(parents=True)
            except OSError as exc:
                raise ArchiveError(f"cannot create the archive folder {self.folder}: "
                                   f"{exc.strerror}") from None
        elif create is False and not (self.folder / CHDB_DATA).is_dir():
            raise ArchiveError(f"{self.folder} holds no archive yet; fill it with: "
                               f"cvahash archive ingest FILE.cvaup --archive {self.folder}")
        try:
            self._lock = open(self.folder / LOCK_FILE, "a+")
        except OSError as exc:
            raise ArchiveError(f"cannot open {self.folder / LOCK_FILE}: {exc.strerror}; check "
                               "the folder's permissions") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ArchiveError(
                f"the archive {self.folder} is open in another process (embedded chDB lets "
                "one process use a folder at a time); wait for it to finish, or serve the "
                "archive from a ClickHouse server (--archive clickhouse://user@host:port/db) "
                "for several users") from None
        try:
            self._session = session.Session(str(self.folder / CHDB_DATA))
        except Exception as exc:  # chDB raises RuntimeError / ChdbError
            self._lock.close()
            raise ArchiveError(f"chDB cannot open {self.folder / CHDB_DATA}: {exc}; only one "
                               "archive folder can be open per process") from None

    def _run(self, sql, params, fmt):
        if self._session is None:
            raise ArchiveError(f"the archive {self.folder} is closed")
        bound = {k: chdb_param(v) for k, v in (params or {}).items()} or None
        try:
            return self._session.query(sql, fmt, params=bound)
        except Exception as exc:
            raise ArchiveError(f"archive {self.folder}: {_short(exc)}") from None

    def command(self, sql, params=None):
        self._run(sql, params, "CSV")

    def query(self, sql, params=None):
        return self._run(sql, params, "ArrowTable")

    def insert(self, table, data, settings=None):
        # chDB reads the Arrow table straight from this frame's local variable.
        _cvahash_rows = data  # noqa: F841 - named in the SQL below
        names = ", ".join(data.column_names)
        extra = ", ".join(f"{k} = {int(v)}" for k, v in (settings or {}).items())
        self._run(f"INSERT INTO {table} ({names}) " + (f"SETTINGS {extra} " if extra else "")
                  + "SELECT * FROM Python(_cvahash_rows)", None, "CSV")

    def close(self):
        if getattr(self, "_session", None) is not None:
            try:
                self._session.close()
            finally:
                self._session = None
                self._lock.close()


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:500]


# ---------------------------------------------------------------------------------------
# A ClickHouse server or cluster


def parse_url(url: str) -> dict[str, Any]:
    """``clickhouse://user@host:port/db`` -> connection fields (no password: see
    `read_password`). ``clickhouses://`` uses TLS. Port defaults to 8123 (8443 TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("clickhouse", "clickhouses"):
        raise InvalidArgument(f"--archive {url}: expected a folder or "
                              "clickhouse://user@host:port/db")
    if parts.password is not None:
        raise InvalidArgument(
            "--archive: the URL carries a password; take it out and put it in "
            f"${PASSWORD_ENV} or in a file only you can read (chmod 600) named by "
            f"${PASSWORD_FILE_ENV}")
    if not parts.hostname:
        raise InvalidArgument(f"--archive {url}: no host; expected clickhouse://user@host:port/db")
    database = parts.path.strip("/") or "default"
    if "/" in database or not database.replace("_", "").isalnum():
        raise InvalidArgument(f"--archive {url}: database name {database!r} must be letters, "
                              "digits and _")
    secure = parts.scheme == "clickhouses"
    try:
        port = parts.port or (8443 if secure else 8123)
    except ValueError:
        raise InvalidArgument(f"--archive {url}: the port is not a number") from None
    return {"host": parts.hostname, "port": port, "username": unquote(parts.username or "default"),
            "database": database, "secure": secure}


def read_password(environ=os.environ) -> str:
    """The server password: ``$CVAHASH_ARCHIVE_PASSWORD``, else the file named by
    ``$CVAHASH_ARCHIVE_PASSWORD_FILE`` (refused unless only its owner may read it), else
    empty."""
    if environ.get(PASSWORD_ENV) is not None:
        return environ[PASSWORD_ENV]
    name = environ.get(PASSWORD_FILE_ENV)
    if not name:
        return ""
    path = Path(name)
    try:
        info = path.stat()
    except OSError as exc:
        raise ArchiveError(f"{path} (${PASSWORD_FILE_ENV}): cannot read the password file: "
                           f"{exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ArchiveError(f"{path} (${PASSWORD_FILE_ENV}) can be read by others (mode "
                           f"{stat.S_IMODE(info.st_mode):o}); run: chmod 600 {path}")
    return path.read_text(encoding="utf-8").rstrip("\r\n")


class ServerEngine(Engine):
    """A ClickHouse server (or a cluster's entry node) through clickhouse-connect."""

    kind = "server"

    def __init__(self, url: str, environ=os.environ):
        fields = parse_url(url)
        try:
            import clickhouse_connect  # optional: the [archive] extra
        except ImportError:
            raise MissingExtra(f"a ClickHouse server archive needs clickhouse-connect: "
                               f"{EXTRA_HINT}") from None
        self.target = (f"clickhouse://{fields['username']}@{fields['host']}:{fields['port']}/"
                       f"{fields['database']}")
        try:
            self._client = clickhouse_connect.get_client(
                password=read_password(environ), connect_timeout=10, **fields)
        except Exception as exc:
            raise ArchiveError(f"cannot connect to {self.target}: {_short(exc)}; check the "
                               f"server is up and the user and ${PASSWORD_ENV}") from None

    def command(self, sql, params=None):
        try:
            self._client.command(sql, parameters=params or None)
        except Exception as exc:
            raise ArchiveError(f"archive {self.target}: {_short(exc)}") from None

    def query(self, sql, params=None):
        try:
            return self._client.query_arrow(sql, parameters=params or None)
        except Exception as exc:
            raise ArchiveError(f"archive {self.target}: {_short(exc)}") from None

    def insert(self, table, data, settings=None):
        try:
            self._client.insert_arrow(table, data, settings=settings or None)
        except Exception as exc:
            raise ArchiveError(f"archive {self.target}: {_short(exc)}") from None

    def close(self):
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()


def open_engine(target: str | os.PathLike, *, create: bool = True) -> Engine:
    """The engine for ``--archive TARGET``: a URL opens a server, anything else a folder."""
    text = str(target)
    if text.startswith(("clickhouse://", "clickhouses://")):
        return ServerEngine(text)
    if "://" in text:
        raise InvalidArgument(f"--archive {text}: expected a folder or "
                              "clickhouse://user@host:port/db")
    return ChdbEngine(text, create=create)
