"""Everything the index keeps in its database, behind one class.

SQLAlchemy Core over SQLite (a file: the embedded default) or PostgreSQL (a URL: several
writers and machines sharing one catalogue), with the same tables, statements and
migrations: the caption bank once, then one row per image (its file facts, its own image
vector and its mean caption vector) and its top-N captions with their match scores.
Vectors are float32 blobs (BLOB on SQLite, BYTEA on PostgreSQL). The schema is versioned
with numbered migrations so an old index opens in a new release.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shlex
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import sqlalchemy as sa
from filelock import FileLock, Timeout
from sqlalchemy.dialects import postgresql, sqlite

from imgsearch.errors import ImgsearchError
from imgsearch.files import PhotoFacts

SCHEMA_VERSION = 4

metadata = sa.MetaData()

meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

captions_table = sa.Table(
    "captions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

images_table = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False, unique=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, index=True),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("image_vector", sa.LargeBinary, nullable=False),
    sa.Column("caption_vector", sa.LargeBinary, nullable=False),
    sa.Column("indexed_at", sa.Float, nullable=False),
    # The image's concept bag and its classifier's top class probability (schema 2): NULL
    # in rows stored before, or by a model without class probabilities.
    sa.Column("concept_vector", sa.LargeBinary, nullable=True),
    sa.Column("class_confidence", sa.Float, nullable=True),
)

image_captions_table = sa.Table(
    "image_captions",
    metadata,
    sa.Column(
        "image_id",
        sa.Integer,
        sa.ForeignKey("images.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("rank", sa.Integer, primary_key=True),
    # No index on caption_id: nothing looks images up by caption, and keeping one cost a
    # third of the time of storing a run's caption rows (20 an image).
    sa.Column("caption_id", sa.Integer, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
)

# What each photo's file says beyond its pixels (schema 3): EXIF capture time as the camera
# wrote it (local time, ISO form), orientation, camera, GPS position, the JPEG quality
# estimated from its tables, and its perceptual hashes in the eight orientations (64 bytes).
# An image indexed before schema 3 has no row until its next run reads them.
facts_table = sa.Table(
    "photo_facts",
    metadata,
    sa.Column(
        "image_id",
        sa.Integer,
        sa.ForeignKey("images.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("taken", sa.String(32), nullable=True, index=True),
    sa.Column("orientation", sa.Integer, nullable=True),
    sa.Column("make", sa.Text, nullable=True),
    sa.Column("model", sa.Text, nullable=True),
    sa.Column("gps_lat", sa.Float, nullable=True),
    sa.Column("gps_lon", sa.Float, nullable=True),
    sa.Column("quality", sa.Integer, nullable=True),
    sa.Column("hashes", sa.LargeBinary, nullable=False),
)

skipped_table = sa.Table(
    "skipped",
    metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)


def _migration_1(conn: sa.Connection) -> None:
    metadata.create_all(conn)
    # The generation row exists from the start, so bumping it is one UPDATE (see
    # _bump_generation) that concurrent writers queue on, never two racing INSERTs.
    conn.execute(meta_table.insert().values(key="generation", value="0"))


def _migration_2(conn: sa.Connection) -> None:
    """The nullable concept_vector and class_confidence columns; rows stored before keep
    NULL there."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("images")}
    for name in ("concept_vector", "class_confidence"):
        if name not in have:  # else made by _migration_1 from today's table definition
            kind = images_table.c[name].type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE images ADD COLUMN {name} {kind}"))


def _migration_3(conn: sa.Connection) -> None:
    """The photo_facts table; the next indexing run fills it in for the images stored before."""
    facts_table.create(conn, checkfirst=True)


def _migration_4(conn: sa.Connection) -> None:
    """The caption_id index goes (see ``image_captions_table``)."""
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_image_captions_caption_id"))


# Numbered schema steps; index i brings a database from version i to i + 1.
MIGRATIONS = [_migration_1, _migration_2, _migration_3, _migration_4]


@dataclass
class ImageRecord:
    """One indexed image as stored. Vectors are float32."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    image_vector: np.ndarray
    caption_vector: np.ndarray
    caption_ids: list[int]
    caption_scores: list[float]
    id: int | None = None
    concept_vector: np.ndarray | None = None
    class_confidence: float | None = None
    facts: PhotoFacts | None = None


@dataclass(frozen=True)
class FileState:
    id: int
    size: int
    mtime_ns: int
    hash: str


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def _maybe_blob(vector: np.ndarray | None) -> bytes | None:
    return None if vector is None else _blob(vector)


def _maybe_vector(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else _vector(blob)


_BUSY = "another imgsearch process is updating {name}; wait for it to finish"
_BUSY_BY = "another imgsearch process is updating {name} ({holder}); wait for it to finish"


def _command_line() -> str:
    """This process's command as a user typed it: 'imgsearch watch photos'."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if Path(program).stem in ("imgsearch", "cli", "__main__"):
        program = "imgsearch"
    return shlex.join([program, *sys.argv[1:]])[:300]


def _record_holder(path: Path, busy: str | None) -> None:
    """Who holds the writer lock, beside the lock file: what a second writer is told. Best
    effort: a folder that takes the lock but not this file leaves the plain message."""
    record = {"pid": os.getpid(), "command": _command_line(), "busy": busy}
    spare = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        spare.write_text(json.dumps(record), "utf-8")
        os.replace(spare, path)  # whole or not at all, for a reader that looks meanwhile
    except OSError:
        with suppress(OSError):
            spare.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process (or no way to tell): take it as alive
    return True


def is_url(db: str | os.PathLike) -> bool:
    """A database URL (``postgresql+psycopg://...``) rather than a SQLite file path."""
    return isinstance(db, str) and "://" in db


def mask_password(url: str) -> str:
    """``url`` with its password hidden, also for text SQLAlchemy cannot parse."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class Store:
    """An index database. Open with ``Store.open``; one writer at a time (``writer()``).

    ``path`` is the SQLite file, or None for a database URL; ``name`` is what messages
    show: the file, or the URL with its password masked.
    """

    def __init__(
        self,
        path: Path | None,
        engine: sa.Engine,
        name: str | None = None,
        read_only: bool = False,
    ):
        self.path = path
        self.engine = engine
        self.name = name if name is not None else str(path)
        self.read_only = read_only  # a SQLite file this process may read but not write
        # What ``open`` was given, for another process to open the same database with the
        # same messages (a writer process); None for a store made otherwise. A URL keeps
        # its password: never show it.
        self.location: str | os.PathLike | None = None
        self._writer_thread: int | None = None  # the thread holding writer(), if one does

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @classmethod
    def open(cls, db: str | os.PathLike, create: bool = False) -> Store:
        """Open (``create``: or make) the index at a SQLite file path or a PostgreSQL URL."""
        if is_url(db):
            store = cls._open_url(str(db), create)
            store.location = db
            return store
        path = Path(db)
        if not path.exists():
            if not create:
                raise ImgsearchError(f"no index at {path}: run 'imgsearch index FOLDER' first")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ImgsearchError(
                    f"cannot create the index at {path}: {exc.strerror}; choose another with --db"
                ) from None
        elif path.is_dir():
            raise ImgsearchError(f"{path} is a folder, not an index database")
        mode = _sqlite_mode(path)
        # The file is opened as a path, never parsed as a URL: a folder named 'q?x' or
        # '%41' keeps its database inside it (a file: URI, the path percent-quoted).
        uri = "file:" + quote(os.fsencode(os.path.abspath(path))) + "?mode=" + mode
        connect = functools.partial(sqlite3.connect, uri, uri=True, check_same_thread=False)
        engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)
        sa.event.listen(engine, "connect", functools.partial(_sqlite_pragmas, mode == "rwc"))
        store = cls(path, engine, read_only=mode != "rwc")
        try:
            store._migrate(create)
        except sa.exc.DatabaseError as exc:
            engine.dispose()
            reason = str(exc.orig) if exc.orig else str(exc)
            if _sqlite_code(exc.orig) in (_CORRUPT, _NOTADB):
                reason += f"; {_REBUILD.format(path=path)}"
            raise ImgsearchError(f"cannot open the index at {path}: {reason}") from None
        except BaseException:
            engine.dispose()
            raise
        # From here on, a damaged page, a full disk or a read-only file found by any
        # statement is one line naming the index, never SQL with its parameters.
        sa.event.listen(engine, "handle_error", _sqlite_error(str(path)))
        store.location = db
        return store

    @classmethod
    def _open_url(cls, text: str, create: bool) -> Store:
        """A PostgreSQL database; every way of failing to reach it is one line."""
        try:
            url = sa.engine.make_url(text)
        except sa.exc.ArgumentError:
            raise ImgsearchError(f"cannot read the database URL {mask_password(text)!r}") from None
        name = url.render_as_string(hide_password=True)
        if url.drivername in ("postgres", "postgresql"):
            # A bare postgresql:// would mean psycopg2; psycopg (3) is the one the extra installs.
            url = url.set(drivername="postgresql+psycopg")
        if url.get_backend_name() != "postgresql":
            raise ImgsearchError(
                f"unsupported database {name}: give a SQLite file path or a "
                "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE URL"
            )
        if url.get_driver_name() not in ("psycopg", "psycopg2"):
            raise ImgsearchError(f"unsupported PostgreSQL driver in {name}: use postgresql+psycopg")
        if "connect_timeout" not in url.query:  # a libpq setting: an unreachable host fails soon
            url = url.update_query_dict({"connect_timeout": "10"})
        try:
            engine = sa.create_engine(url, pool_size=2, max_overflow=8)
        except ImportError:
            driver = url.get_driver_name()
            fix = "pip install 'imgsearch[postgres]'" if driver == "psycopg" else "use +psycopg"
            raise ImgsearchError(
                f"{name} needs the {driver} package, not installed: {fix}"
            ) from None
        # Lost or refused connections, later as well as now, become one line naming the URL.
        sa.event.listen(engine, "handle_error", _connection_error(name, url.password))
        store = cls(None, engine, name)
        try:
            store._migrate(create)
        except sa.exc.DBAPIError as exc:  # e.g. a role that may not create tables
            engine.dispose()
            reason = " ".join(str(exc.orig or exc).split())
            raise ImgsearchError(f"cannot open the index at {name}: {reason}") from None
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def _migrate(self, create: bool) -> None:
        with self.engine.begin() as conn:
            if self.is_postgres:
                # Processes opening a new database at once: one creates the tables, the
                # others wait for it (until commit) and then find them made.
                key = _lock_key(conn, "migrate")
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
            has_meta = sa.inspect(conn).has_table("meta")
            version = 0
            if has_meta:
                row = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).first()
                version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise ImgsearchError(
                    f"the index at {self.name} was made by a newer imgsearch "
                    f"(schema {version}); upgrade imgsearch to use it"
                )
            if not has_meta and not create:
                raise ImgsearchError(
                    f"no index in {self.name} yet: run 'imgsearch index FOLDER' with this --db"
                )
            for step in MIGRATIONS[version:]:
                step(conn)
            if version != SCHEMA_VERSION:
                _upsert_meta(conn, {"schema_version": str(SCHEMA_VERSION)})

    @contextmanager
    def writer(self, busy: str | None = None) -> Iterator[None]:
        """Hold the index's write lock: a second writer stops at once with a clear message.

        SQLite: a lock file beside the database. PostgreSQL: a session advisory lock, held
        on a connection of its own for as long as the writer runs; a writer that dies
        loses its connection and with it the lock, so no stale lock is ever left behind.

        The thread holding it may take it again (a watcher holds it across many ``add``
        runs). ``busy`` is the message a second writer gets meanwhile (``{name}``: the
        index, ``{holder}``: 'PID 123: imgsearch watch photos'); by default it says that
        another process is updating the index. SQLite records it beside the lock file.
        """
        if self._writer_thread == threading.get_ident():
            if not self.is_postgres:
                self.check_intact()
            yield
            return
        if self.read_only:
            raise ImgsearchError(
                f"the index at {self.name} is read-only here (no permission to write it or "
                "its folder, or a read-only disk): it answers queries but cannot be changed"
            )
        if self.is_postgres:
            # Autocommit: the lock belongs to the session, and an open transaction held
            # for the whole run would keep the server from cleaning up old row versions.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                key = _lock_key(conn, "writer")
                if not conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar():
                    raise ImgsearchError(_BUSY.format(name=self.name))
                try:
                    with self._held():
                        yield
                finally:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            return
        lock = FileLock(str(self.path) + ".lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ImgsearchError(self._busy_message()) from None
        holder = Path(str(self.path) + ".holder")
        try:
            _record_holder(holder, busy)
            self.check_intact()
            # One idle connection kept open for the run: SQLite checkpoints the WAL into
            # the database when its last connection closes, and every batch's transaction
            # opens and closes one (10 ms a batch of 256 on the 2-core machine).
            keep = self.engine.raw_connection()
            try:
                with self._held():
                    yield
            finally:
                keep.close()
        finally:
            with suppress(OSError):
                holder.unlink()
            lock.release()

    @contextmanager
    def _held(self) -> Iterator[None]:
        self._writer_thread = threading.get_ident()
        try:
            yield
        finally:
            self._writer_thread = None

    def _busy_message(self) -> str:
        """What a second writer is told: the holder's own message where it left one (and
        is still running), else that another process is updating the index."""
        try:
            record = json.loads(Path(str(self.path) + ".holder").read_text("utf-8"))
            pid, command = int(record["pid"]), str(record["command"])
            template = record.get("busy") or _BUSY_BY
        except (OSError, ValueError, KeyError, TypeError):
            return _BUSY.format(name=self.name)  # no record: a holder older than records
        if not _running(pid):  # a record left by a holder that was killed
            return _BUSY.format(name=self.name)
        try:
            return template.format(name=self.name, holder=f"PID {pid}: {command}")
        except (KeyError, IndexError, ValueError):
            return _BUSY_BY.format(name=self.name, holder=f"PID {pid}: {command}")

    def check_intact(self) -> None:
        """SQLite's quick check (every page's structure, in one pass over the file): a
        writer never plans changes, or reports nothing changed, over a damaged database."""
        with self.engine.connect() as conn:
            found = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check(1)")]
        if found != ["ok"]:
            detail = " ".join(" ".join(found).replace("*** in database main ***", "").split())
            raise ImgsearchError(_damaged(self.name, detail))

    # --- settings -----------------------------------------------------------

    def generation(self) -> str:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "generation")
            ).first()
        return row[0] if row else "0"

    def meta(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(meta_table.c.key, meta_table.c.value)).all())

    def set_meta(self, values: dict[str, str]) -> None:
        with self.engine.begin() as conn:
            _upsert_meta(conn, values)

    # --- caption bank -------------------------------------------------------

    def save_bank(self, texts: list[str], vectors: np.ndarray, meta: dict[str, str]) -> None:
        """Replace the caption bank and the settings that go with it, atomically."""
        with self.engine.begin() as conn:
            _bump_generation(conn)
            conn.execute(captions_table.delete())
            rows = [
                {"id": i, "text": t, "vector": _blob(v)}
                for i, (t, v) in enumerate(zip(texts, vectors))
            ]
            for start in range(0, len(rows), 5000):
                conn.execute(captions_table.insert(), rows[start : start + 5000])
            _upsert_meta(conn, meta)

    def load_bank(self) -> tuple[list[str], np.ndarray]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(captions_table.c.text, captions_table.c.vector).order_by(
                    captions_table.c.id
                )
            ).all()
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [r[0] for r in rows], np.stack([_vector(r[1]) for r in rows])

    # --- images -------------------------------------------------------------

    def file_states(self, ids: Iterable[int] | None = None) -> dict[str, FileState]:
        """Every indexed file's state by path (only those of ``ids`` when given)."""
        t = images_table
        query = sa.select(t.c.path, t.c.id, t.c.size, t.c.mtime_ns, t.c.hash)
        wanted = None if ids is None else [int(i) for i in ids]
        rows = []
        with self.engine.connect() as conn:
            if wanted is None:
                rows = conn.execute(query).all()
            for start in range(0, len(wanted or ()), 500):
                chunk = wanted[start : start + 500]
                rows += conn.execute(query.where(t.c.id.in_(chunk))).all()
        return {r[0]: FileState(r[1], r[2], r[3], r[4]) for r in rows}

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(images_table)).scalar_one()

    def put_images(
        self, records: list[ImageRecord], skipped: Sequence[tuple[str, int, int, str]] = ()
    ) -> None:
        """Insert or replace images (by path) with their captions, and remember the files
        that failed (path, size, mtime_ns, reason), all in one transaction.

        Every table takes its rows in one executemany; the new images' ids are then read
        back by path in one query (ids were once taken one INSERT at a time, which cost as
        much as the rest of the batch)."""
        if not records and not skipped:
            return
        now = time.time()
        t = images_table
        with self.engine.begin() as conn:
            if records:
                _bump_generation(conn)
                paths = [r.path for r in records]
                conn.execute(t.delete().where(t.c.path.in_(paths)))
                conn.execute(skipped_table.delete().where(skipped_table.c.path.in_(paths)))
                _insert_rows(conn, t, _IMAGE_COLUMNS, [_image_row(r, now) for r in records])
                found = sa.select(t.c.path, t.c.id).where(t.c.path.in_(paths))
                ids = dict(conn.execute(found).all())
                for r in records:
                    r.id = ids[r.path]
                captions = [
                    (r.id, rank, int(c), float(s))
                    for r in records
                    for rank, (c, s) in enumerate(zip(r.caption_ids, r.caption_scores))
                ]
                if JSON_CAPTION_ROWS and conn.dialect.name == "sqlite":
                    _insert_json(conn, image_captions_table, _CAPTION_COLUMNS, captions)
                else:
                    _insert_rows(conn, image_captions_table, _CAPTION_COLUMNS, captions)
                facts = [_facts_row(r.id, r.facts) for r in records if r.facts is not None]
                facts = [tuple(f[c] for c in _FACTS_COLUMNS) for f in facts]
                _insert_rows(conn, facts_table, _FACTS_COLUMNS, facts)
            if skipped:
                rows = [
                    {"path": p, "size": size, "mtime_ns": mtime, "reason": reason}
                    for p, size, mtime, reason in skipped
                ]
                _upsert_many(conn, skipped_table, rows, "path")

    def without_facts(self) -> dict[int, str]:
        """Images stored before their files' facts were read (an index made before schema
        3): id -> path."""
        t, f = images_table, facts_table
        query = sa.select(t.c.id, t.c.path).outerjoin(f, f.c.image_id == t.c.id)
        with self.engine.connect() as conn:
            return dict(conn.execute(query.where(f.c.image_id.is_(None))).all())

    def put_facts(self, facts: list[tuple[int, PhotoFacts]]) -> None:
        """Store (or replace) the facts of images already indexed, in one transaction."""
        if not facts:
            return
        with self.engine.begin() as conn:
            ids = [i for i, _ in facts]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                conn.execute(facts_table.delete().where(facts_table.c.image_id.in_(chunk)))
            conn.execute(facts_table.insert(), [_facts_row(i, f) for i, f in facts])

    def facts(self, ids: Iterable[int] | None = None) -> dict[int, PhotoFacts]:
        """The stored facts by image id (all images', or ``ids``'); images without any are
        left out."""
        f = facts_table
        query = sa.select(f)
        wanted = None if ids is None else [int(i) for i in ids]
        out: dict[int, PhotoFacts] = {}
        with self.engine.connect() as conn:
            chunks = (
                [None]
                if wanted is None
                else [wanted[s : s + 500] for s in range(0, len(wanted), 500)]
            )
            for chunk in chunks:
                q = query if chunk is None else query.where(f.c.image_id.in_(chunk))
                for row in conn.execute(q):
                    gps = None if row.gps_lat is None else (row.gps_lat, row.gps_lon)
                    out[row.image_id] = PhotoFacts(
                        row.format, row.taken, row.orientation, row.make, row.model, gps,
                        row.quality, bytes(row.hashes),
                    )  # fmt: skip
        return out

    def skipped_files(self) -> dict[str, tuple[int, int, str]]:
        """Files that failed before: an unchanged bad file is not decoded again."""
        t = skipped_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.path, t.c.size, t.c.mtime_ns, t.c.reason)).all()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def mark_skipped(self, path: str, size: int, mtime_ns: int, reason: str) -> None:
        self.put_images([], [(path, size, mtime_ns, reason)])

    def forget_skipped_reason(self, prefix: str) -> None:
        """Drop the failure records whose reason starts with ``prefix`` (e.g. a limit's, when
        the limit changes): those files are tried again."""
        t = skipped_table
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(sa.func.substr(t.c.reason, 1, len(prefix)) == prefix))

    def forget_skipped(self, keep: set[str]) -> None:
        """Drop failure records of files that are gone."""
        t = skipped_table
        with self.engine.begin() as conn:
            gone = [p for (p,) in conn.execute(sa.select(t.c.path)) if p not in keep]
            for start in range(0, len(gone), 500):
                conn.execute(t.delete().where(t.c.path.in_(gone[start : start + 500])))

    def update_files(self, changes: list[tuple[int, str, int, int]]) -> None:
        """Record new paths or file times (id, path, size, mtime_ns) for moved or touched files."""
        if not changes:
            return
        t = images_table
        with self.engine.begin() as conn:
            _bump_generation(conn)
            # Two steps, so that paths swapped between files never clash on the unique key.
            # The placeholder starts with '/', which no stored (relative) path does, and has
            # no NUL byte, which PostgreSQL text cannot hold.
            for image_id, _, _, _ in changes:
                conn.execute(
                    t.update().where(t.c.id == image_id).values(path=f"/moving/{image_id}")
                )
            for image_id, path, size, mtime_ns in changes:
                conn.execute(
                    t.update()
                    .where(t.c.id == image_id)
                    .values(path=path, size=size, mtime_ns=mtime_ns)
                )

    def remove_ids(self, ids: Iterable[int]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        with self.engine.begin() as conn:
            _bump_generation(conn)
            for start in range(0, len(ids), 500):
                conn.execute(
                    images_table.delete().where(images_table.c.id.in_(ids[start : start + 500]))
                )
        return len(ids)

    def ids_under(self, prefix: str) -> list[int]:
        """Ids of the images at ``prefix`` or inside the folder ``prefix`` ('' means all)."""
        t = images_table
        query = sa.select(t.c.id)
        if prefix:
            folder = prefix.rstrip("/") + "/"
            # substr, not LIKE: LIKE ignores case on SQLite and not on PostgreSQL.
            inside = sa.func.substr(t.c.path, 1, len(folder)) == folder
            query = query.where(sa.or_(t.c.path == prefix, inside))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(query)]

    def get(self, path: str) -> ImageRecord | None:
        """One image by its path, with its captions."""
        t = images_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.path == path)).first()
            if row is None:
                return None
            caps = conn.execute(
                sa.select(image_captions_table.c.caption_id, image_captions_table.c.score)
                .where(image_captions_table.c.image_id == row.id)
                .order_by(image_captions_table.c.rank)
            ).all()
        return ImageRecord(
            path=row.path,
            size=row.size,
            mtime_ns=row.mtime_ns,
            hash=row.hash,
            width=row.width,
            height=row.height,
            image_vector=_vector(row.image_vector),
            caption_vector=_vector(row.caption_vector),
            caption_ids=[c for c, _ in caps],
            caption_scores=[s for _, s in caps],
            id=row.id,
            concept_vector=_maybe_vector(row.concept_vector),
            class_confidence=row.class_confidence,
        )

    def vectors(self, column: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """All images' ids, paths and one vector column ('caption_vector', 'image_vector',
        'concept_vector'; a number column such as 'class_confidence' comes as 1-vectors; an
        image without the value is an error, see ``missing``)."""
        t = images_table
        with self.engine.connect() as conn:  # the driver's rows: a third of the time here
            rows = _plain_rows(conn, sa.select(t.c.id, t.c.path, t.c[column]).order_by(t.c.id))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if not rows:
            return ids, [], np.zeros((0, 0), np.float32)
        return ids, [r[1] for r in rows], np.stack([self._stored(column, r[2]) for r in rows])

    def average(self, column: str) -> float | None:
        """The mean of a number column over the images that have a value (None: none has)."""
        t = images_table
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.avg(t.c[column]))).scalar()
        return None if value is None else float(value)

    def missing(self, column: str) -> int:
        """How many images have no vector in a nullable column (``concept_vector``)."""
        t = images_table
        query = sa.select(sa.func.count()).select_from(t).where(t.c[column].is_(None))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def _stored(self, column: str, blob: bytes | float | None) -> np.ndarray:
        if isinstance(blob, float):
            return np.array([blob], np.float32)
        if blob is None:
            raise ImgsearchError(
                f"the index at {self.name} keeps no {column.replace('_', ' ')} (made before "
                "they were kept, or by a model without class probabilities): make a new one "
                "with 'imgsearch index FOLDER --db NEW' to use them"
            )
        return _vector(blob)

    def vectors_for(self, columns: Sequence[str], ids: Sequence[int]) -> dict[str, np.ndarray]:
        """The vector ``columns`` of the images ``ids``, in that order (all must exist),
        read in one pass: a blob column read alone walks the row's overflow pages again,
        and four columns read one by one took twice as long."""
        t = images_table
        wanted = [int(i) for i in ids]
        found: dict[int, tuple] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                query = sa.select(t.c.id, *(t.c[c] for c in columns)).where(t.c.id.in_(part))
                found.update((row[0], row[1:]) for row in _plain_rows(conn, query))
        return {
            c: np.stack([self._stored(c, found[i][k]) for i in wanted])
            for k, c in enumerate(columns)
        }

    def _row_pages(self, columns: Sequence[str], size: int) -> Iterator[list[tuple]]:
        """The rows (id, *columns) in id order, ``size`` at a time, as the driver's tuples
        (a column an image lacks is None). Each page is its own query, found through the
        primary key from the last id of the one before (not by skipping rows)."""
        t = images_table
        last = None
        while True:
            query = sa.select(t.c.id, *(t.c[c] for c in columns)).order_by(t.c.id).limit(size)
            if last is not None:
                query = query.where(t.c.id > last)
            with self.engine.connect() as conn:
                rows = _plain_rows(conn, query)
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    def vector_chunks(
        self, columns: Sequence[str], size: int = 32768
    ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """Every image's id and vector ``columns`` in id order, ``size`` images at a time:
        for collections too large to load whole."""
        for rows in self._row_pages(columns, size):
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            stored = [[self._stored(c, r[n]) for r in rows] for n, c in enumerate(columns, 1)]
            yield ids, [np.stack(vectors) for vectors in stored]

    def vector_sums(
        self, columns: Sequence[str], size: int = 32768
    ) -> dict[str, tuple[np.ndarray | None, int]]:
        """Each vector column's sum over the images that have it, with their count (None
        and 0 where none has), from one pass over the table in id order. The rows are
        added one after another in id order, as ``np.add.reduce`` adds the rows of a page,
        so each sum is the same float32 whatever the pages. One pass for every column:
        each column read alone walked the rows' overflow pages again (the collection
        means after a 16,384-photo ``add()`` on the H200: three passes, 0.30 s)."""
        sums: dict[str, np.ndarray | None] = dict.fromkeys(columns)
        counts = dict.fromkeys(columns, 0)
        for rows in self._row_pages(columns, size):
            for n, column in enumerate(columns, 1):
                found = [self._stored(column, r[n]) for r in rows if r[n] is not None]
                if found:
                    total = sums[column]
                    stacked = np.stack(found if total is None else [total, *found])
                    sums[column] = np.add.reduce(stacked, axis=0)
                    counts[column] += len(found)
        return {c: (sums[c], counts[c]) for c in columns}

    def paths(self, ids: Iterable[int]) -> dict[int, str]:
        ids = [int(i) for i in ids]
        t = images_table
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(t.c.id, t.c.path).where(t.c.id.in_(ids))).all())

    def captions_of(self, ids: Iterable[int]) -> dict[int, list[tuple[int, float]]]:
        """Each image's (caption id, match score) list, best first."""
        ids = [int(i) for i in ids]
        t = image_captions_table
        out: dict[int, list[tuple[int, float]]] = {i: [] for i in ids}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.image_id, t.c.caption_id, t.c.score)
                .where(t.c.image_id.in_(ids))
                .order_by(t.c.image_id, t.c.rank)
            ).all()
        for image_id, caption_id, score in rows:
            out[image_id].append((caption_id, score))
        return out

    def sizes(self, ids: np.ndarray) -> list[int]:
        """Pixel counts (width x height) in the order of ``ids``."""
        t = images_table
        with self.engine.connect() as conn:
            pixels = sa.cast(t.c.width, sa.BigInteger) * t.c.height  # no int4 overflow on PG
            rows = dict(conn.execute(sa.select(t.c.id, pixels)).all())
        return [int(rows[int(i)]) for i in ids]

    def dimensions(self, ids: np.ndarray) -> list[tuple[int, int]]:
        """(width, height) of each image, upright, in the order of ``ids``."""
        t = images_table
        with self.engine.connect() as conn:
            rows = {
                r[0]: (r[1], r[2]) for r in conn.execute(sa.select(t.c.id, t.c.width, t.c.height))
            }
        return [rows[int(i)] for i in ids]

    def file_hashes(self, ids: np.ndarray) -> list[str]:
        """Each image's content hash (of its file's bytes), in the order of ``ids``."""
        t = images_table
        with self.engine.connect() as conn:
            rows = dict(conn.execute(sa.select(t.c.id, t.c.hash)).all())
        return [rows[int(i)] for i in ids]

    def caption_lists(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(caption ids, match scores) as (len(ids), N) matrices, rows in the order of ``ids``."""
        t = image_captions_table
        wanted = np.asarray(ids, dtype=np.int64)
        if not len(wanted):
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
        query = sa.select(t.c.image_id, t.c.caption_id, t.c.score)
        low, high = int(wanted.min()), int(wanted.max())
        rows: list = []
        with self.engine.connect() as conn:
            if 2 * len(wanted) >= high - low + 1:  # a page: its id range, in one query
                part = query.where(t.c.image_id.between(low, high))
                rows = _plain_rows(conn, part.order_by(t.c.image_id, t.c.rank))
            else:  # a sample spread over the collection (calibration): only its rows
                for start in range(0, len(wanted), 500):
                    chunk = [int(i) for i in wanted[start : start + 500]]
                    part = query.where(t.c.image_id.in_(chunk))
                    rows += _plain_rows(conn, part.order_by(t.c.image_id, t.c.rank))
        # Rows come grouped by image, best first: each image's run of rows is found from
        # its first row and its count, in one pass of numpy rather than a loop per row.
        table = np.array(rows, dtype=np.float64).reshape(-1, 3)
        owners, first, counts = np.unique(
            table[:, 0].astype(np.int64), return_index=True, return_counts=True
        )
        lost = wanted[~np.isin(wanted, owners)]
        if len(lost):
            raise ImgsearchError(f"the index at {self.name} keeps no captions of image {lost[0]}")
        at = np.searchsorted(owners, wanted)
        width = int(counts[at].min())
        picked = first[at][:, None] + np.arange(width)
        caption_ids = table[picked, 1].astype(np.int64)
        scores = table[picked, 2].astype(np.float32)
        return caption_ids, scores

    def size_on_disk(self) -> int:
        if self.is_postgres:  # tables with their indexes and TOAST (where vectors live)
            with self.engine.connect() as conn:
                return sum(
                    conn.execute(
                        sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": t}
                    ).scalar_one()
                    for t in metadata.tables
                )
        return sum(
            os.path.getsize(p)
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if os.path.exists(p)
        )


def _sqlite_mode(path: Path) -> str:
    """How to open a SQLite file: 'rwc' where this process may write it (a new one too);
    'ro' where it may only read it; 'ro&immutable=1' where not even the WAL's -shm file
    can be made or written (a read-only folder or mount), which SQLite needs otherwise."""
    if not path.exists():
        return "rwc"
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    folder = os.access(path.parent, os.W_OK | os.X_OK)
    if os.access(path, os.W_OK) and (folder or all(os.access(p, os.W_OK) for p in (wal, shm))):
        return "rwc"
    if folder or all(os.access(p, os.R_OK) for p in (wal, shm)):
        return "ro"
    return "ro&immutable=1"


# SQLite's primary result codes (the sqlite3 module names them only from Python 3.11).
_IOERR, _CORRUPT, _READONLY, _FULL, _CANTOPEN, _NOTADB = 10, 11, 8, 13, 14, 26

_REBUILD = "delete {path} and run 'imgsearch index FOLDER' to rebuild the index"


def _damaged(name: str, detail: str) -> str:
    return f"the index database {name} is damaged ({detail}); {_REBUILD.format(path=name)}"


def _sqlite_code(exc: BaseException | None) -> int | None:
    """The primary SQLite result code of a sqlite3 error (None where Python has none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None and exc is not None:  # Python before 3.11: from the message
        text = str(exc)
        for words, value in (
            ("malformed", _CORRUPT),
            ("not a database", _NOTADB),
            ("disk is full", _FULL),
            ("disk I/O error", _IOERR),
            ("readonly database", _READONLY),
        ):
            if words in text:
                return value
        return None
    return None if code is None else code & 0xFF


def _sqlite_error(name: str) -> Callable[..., None]:
    """A handle_error hook for a SQLite index: the failures a user can act on (a damaged
    file, a full disk, no permission to write) become one line naming the index; the SQL
    and its parameters are never shown. A failed write leaves the index as it was: SQLite
    rolls the transaction back, and every batch committed before it stays."""

    def handle(context: sa.engine.ExceptionContext) -> None:
        orig = context.original_exception
        if not isinstance(orig, sqlite3.Error):
            return
        code = _sqlite_code(orig)
        statement = (context.statement or "").lstrip().upper()
        doing = "reading" if statement.startswith(("SELECT", "PRAGMA")) else "writing to"
        if code in (_CORRUPT, _NOTADB):
            raise ImgsearchError(_damaged(name, str(orig)))
        if code == _FULL:
            raise ImgsearchError(
                f"{doing} the index at {name} failed: the disk is full; the index is intact "
                "(the unfinished batch was rolled back): free some space and run it again"
            )
        if code == _IOERR:
            raise ImgsearchError(
                f"{doing} the index at {name} failed: disk I/O error (a full disk or a file "
                "size limit?); the index is intact (the unfinished batch was rolled back)"
            )
        if code == _READONLY:
            raise ImgsearchError(
                f"the index at {name} is read-only here: it answers queries but cannot be changed"
            )
        if code == _CANTOPEN:
            raise ImgsearchError(f"cannot open the index at {name}: {orig}")

    return handle


def is_disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk, a quota or a file size limit."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _sqlite_pragmas(writable: bool, dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API
    cursor = dbapi_conn.cursor()
    # WAL: readers never wait for the writer. busy_timeout: short waits instead of errors.
    if writable:  # a read-only connection reads the journal mode the file records
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _facts_row(image_id: int, facts: PhotoFacts) -> dict:
    lat, lon = (float(v) for v in facts.gps) if facts.gps is not None else (None, None)

    def whole(value: int | None) -> int | None:
        return None if value is None else int(value)

    return {
        "image_id": int(image_id),
        "format": facts.format[:16],
        "taken": facts.taken,
        "orientation": whole(facts.orientation),
        "make": facts.make,
        "model": facts.model,
        "gps_lat": lat,
        "gps_lon": lon,
        "quality": whole(facts.quality),
        "hashes": facts.hashes,
    }


def _bump_generation(conn: sa.Connection) -> None:
    """Count every change to the vectors, inside its own transaction: files derived from
    them (search indexes, means) carry the generation they were made at, and a different
    one means stale.

    One UPDATE, the first write of every changing transaction: the row lock it takes makes
    concurrent writers' transactions queue here, so each sees the others' committed rows
    and no increment is lost (on SQLite the database's write lock does the same)."""
    t = meta_table
    value = sa.cast(sa.cast(t.c.value, sa.BigInteger) + 1, sa.Text)
    bumped = conn.execute(t.update().where(t.c.key == "generation").values(value=value))
    if not bumped.rowcount:  # an index made before the row was created with the schema
        _upsert_meta(conn, {"generation": "1"})


def _upsert(conn: sa.Connection, table: sa.Table, row: dict, key: str) -> None:
    """Insert ``row`` or overwrite the one with the same ``key``, in one statement that two
    writers can run at once (INSERT ... ON CONFLICT, spelt alike by both dialects)."""
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
    update = {c: v for c, v in row.items() if c != key}
    conn.execute(insert.values(**row).on_conflict_do_update(index_elements=[key], set_=update))


def _upsert_many(conn: sa.Connection, table: sa.Table, rows: list[dict], key: str) -> None:
    """``_upsert`` for many rows in one executemany: each row's other columns overwrite
    those of the row with its ``key``."""
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
    update = {c: insert.excluded[c] for c in rows[0] if c != key}
    conn.execute(insert.on_conflict_do_update(index_elements=[key], set_=update), rows)


_IMAGE_COLUMNS = (
    "path", "size", "mtime_ns", "hash", "width", "height", "image_vector", "caption_vector",
    "concept_vector", "class_confidence", "indexed_at",
)  # fmt: skip
_CAPTION_COLUMNS = ("image_id", "rank", "caption_id", "score")
_FACTS_COLUMNS = (
    "image_id", "format", "taken", "orientation", "make", "model", "gps_lat", "gps_lon",
    "quality", "hashes",
)  # fmt: skip


def _image_row(r: ImageRecord, now: float) -> tuple:
    """The row of ``_IMAGE_COLUMNS``, in Python's own types: the driver gets no type
    processing, and it would store a numpy scalar (a buffer) as a blob."""
    confidence = None if r.class_confidence is None else float(r.class_confidence)
    return (
        r.path, int(r.size), int(r.mtime_ns), r.hash, int(r.width), int(r.height),
        _blob(r.image_vector), _blob(r.caption_vector), _maybe_blob(r.concept_vector),
        confidence, float(now),
    )  # fmt: skip


def _insert_rows(conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list) -> None:
    """INSERT tuples of ``columns`` through the driver's own executemany. SQLAlchemy's
    per-row parameter handling cost more than SQLite's inserting did (0.3 ms an image, of
    which the rows' dictionaries took most; issue 17's writer was slower than the model)."""
    if not rows:
        return
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
    if mark is None:  # a driver of another style: the portable path
        conn.execute(table.insert(), [dict(zip(columns, row)) for row in rows])
        return
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    marks = ", ".join([mark] * len(columns))
    conn.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({names}) VALUES ({marks})", rows)


def _plain_rows(conn: sa.Connection, query: sa.Select) -> list[tuple]:
    """The rows of a SELECT (numbers, blobs, text) as the driver's own tuples. SQLAlchemy's
    rows, and turning them into tuples for numpy, took as long again as the query itself for
    the 40,000 caption rows that calibrating after each ``add()`` reads, most of the
    calibration's time in py-spy's samples on the H200. The query is compiled with its
    numbers written in: only integers are bound."""
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        cursor.close()


# False: caption rows through executemany on SQLite too, as on PostgreSQL (what
# benchmarks/add_variants.py compares against).
JSON_CAPTION_ROWS = True


def _insert_json(conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: list) -> None:
    """INSERT tuples of numbers (or strings) of ``columns`` into SQLite in one statement,
    which reads them from one JSON text with ``json_each``.

    For the caption rows (20 an image): through executemany the driver let go of the GIL
    and took it back for every row, and beside a GPU's busy threads each taking back
    waited. On the H200 (640x480, ViT-B/32, 4,096 photos) add() ran at 2,218-2,341 images/s
    so against 1,717-1,975 with executemany, in one run; alone it is slower (0.21 s against
    0.13 for 82,000 rows on the 2-core machine)."""
    if not rows:
        return
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    conn.exec_driver_sql(
        f"INSERT INTO {quote(table.name)} ({names}) SELECT {values} FROM json_each(?)",
        (json.dumps(rows),),
    )


def _upsert_meta(conn: sa.Connection, values: dict[str, str]) -> None:
    for key, value in values.items():
        _upsert(conn, meta_table, {"key": key, "value": str(value)}, "key")


def _lock_key(conn: sa.Connection, purpose: str) -> int:
    """A 64-bit PostgreSQL advisory lock key for this index. Advisory locks are per
    database; the schema is in the key so that indexes in two schemas of one database
    do not block each other."""
    schema = conn.execute(sa.select(sa.func.current_schema())).scalar()
    digest = hashlib.sha256(f"imgsearch:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _connection_error(name: str, password: str | None) -> Callable[..., None]:
    """A handle_error hook: a refused, failed or lost PostgreSQL connection (wrong password,
    server down, no such database) becomes one line naming the masked URL."""

    def handle(context: sa.engine.ExceptionContext) -> None:
        if not isinstance(context.sqlalchemy_exception, sa.exc.OperationalError):
            return
        reason = " ".join(str(context.original_exception).split())
        if password:
            reason = reason.replace(password, "***")
        raise ImgsearchError(f"cannot use the database {name}: {reason}")

    return handle
