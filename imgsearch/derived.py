"""Files and tables made from the database, kept so a query never reads every vector.

The collection's mean vectors and each scoring method's search index are saved beside a
SQLite file (for a database URL: in the cache folder, one subfolder per database), each
stamped with the database's identity (a random id it gets when it is made) and its
generation (a counter every write transaction bumps), and checksummed. A file whose stamp
or checksum differs, or that cannot be read, is rebuilt; one that cannot be written is
kept in memory only. In memory, everything here is forgotten when the generation moves on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from imgsearch import config
from imgsearch.results import IndexedFile
from imgsearch.search import VectorIndex
from imgsearch.storage import FileState, Store

T = TypeVar("T")

# The vector columns whose collection means are kept (``{name}_vector``).
MEANS = ("caption", "image", "concept")
# Kept with them: the mean class confidence (``Index.coverage``), NaN where none has one.
CONFIDENCE = "class_confidence"


class Derived:
    """What is derived from one index's database, in memory and on disk."""

    def __init__(self, store: Store):
        self.store = store
        self._memo: dict[str, object] = {}
        self._generation: str | None = None

    def clear(self) -> None:
        """Forget everything held in memory (this process changed the database)."""
        self._memo.clear()
        self._generation = None

    def refresh(self) -> bool:
        """Forget what is held when another process changed the database since the last
        call: a long-lived reader (``imgsearch serve``) calls it before each request."""
        current = self.store.generation()
        changed = self._generation not in (None, current)
        if changed:
            self._memo.clear()
        self._generation = current
        return changed

    def stamp(self) -> str:
        """Which database, at which generation: a new database (say, the old file deleted
        and the folder indexed again) never takes another's files as its own, even at the
        same generation number. Indexes made before the id existed use their creation time."""
        meta = self.store.meta()
        identity = meta.get("db_id") or meta.get("created", "")
        return f"{identity}:{self.store.generation()}"

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """``make()``'s result, kept until the database changes."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]  # type: ignore[return-value]

    def path(self, name: str) -> Path:
        """Where a file made from the database is kept: beside a SQLite file; for a URL, in
        the cache folder, one subfolder per database (a hash of the URL, password masked),
        so every machine keeps its own copy, stamped with the generation like any other."""
        if self.store.path is not None:
            return self.store.path.with_name(f"{self.store.path.name}.{name}")
        key = hashlib.sha256(self.store.name.encode()).hexdigest()[:16]
        folder = config.cache_dir() / "databases" / key
        with contextlib.suppress(OSError):  # unwritable: the file is simply not kept
            folder.mkdir(parents=True, exist_ok=True)
        return folder / f"index.{name}"

    def files(self) -> tuple[dict[str, FileState], dict[int, str]]:
        """Every indexed file's state by path, and the paths by id."""

        def read() -> tuple[dict[str, FileState], dict[int, str]]:
            states = self.store.file_states()
            return states, {state.id: path for path, state in states.items()}

        return self.memo("files", read)

    def indexed_file(self, root: Path, image: int | str) -> IndexedFile | None:
        """An indexed image by id or by path relative to ``root``; None for anything not in
        the index, or no longer a regular file inside the indexed folder."""
        files, file_ids = self.files()
        relative = file_ids.get(image) if isinstance(image, int) else image
        state = files.get(relative) if relative is not None else None
        if state is None:
            return None
        path = root / relative
        try:
            if not (path.is_file() and path.resolve(strict=True).is_relative_to(root)):
                return None
        except OSError:
            return None
        return IndexedFile(state.id, path, state.hash, state.size, state.mtime_ns)

    def means(self, caption_dim: int | Callable[[], int]) -> dict[str, np.ndarray]:
        """The collection's mean caption, image and concept vectors (zeros while it has
        none; the concept mean is over the images that have a concept bag). ``caption_dim``
        may be a function: asked only for an empty collection's zeros (it may load the
        caption bank, which a query of an indexed photo need not read)."""
        return self.memo("means", lambda: self._load_means(caption_dim))

    def coverage(self) -> float | None:
        """The images' mean class confidence (None: none has one), kept in the means file:
        on a query, the average over a large database's rows took 0.4 s."""

        def read() -> float | None:
            saved = _read_means(self.path("means.npz"), self.stamp())
            if saved is None:
                return self.store.average("class_confidence")
            value = float(saved[CONFIDENCE][0])
            return None if math.isnan(value) else value

        return self.memo("coverage", read)

    def _load_means(self, caption_dim: int | Callable[[], int]) -> dict[str, np.ndarray]:
        stamp = self.stamp()
        path = self.path("means.npz")
        saved = _read_means(path, stamp)
        if saved is not None:
            return saved
        confidence = self.store.average("class_confidence")
        means = {CONFIDENCE: np.array([math.nan if confidence is None else confidence])}
        # Summed row by row, a page at a time: numpy's own order for a column mean, so the
        # same float32 result without holding every vector; all columns in one pass.
        sums = self.store.vector_sums([f"{name}_vector" for name in MEANS])
        for name in MEANS:
            total, count = sums[f"{name}_vector"]
            if count:
                mean = total / np.float32(count)
            elif name == "caption":
                mean = np.zeros(caption_dim() if callable(caption_dim) else caption_dim)
            else:
                mean = np.zeros(1)
            means[name] = mean.astype(np.float32)
        with contextlib.suppress(OSError):
            temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
            digest = _digest(stamp, means)
            np.savez(temporary, stamp=np.array(stamp), digest=np.array(digest), **means)
            os.replace(temporary, path)
        return means

    def search_index(
        self,
        name: str,
        tags: list,
        memory: int,
        build: Callable[[str, Path], VectorIndex],
    ) -> VectorIndex:
        """A search index loaded from ``index.db.{name}.vix`` when its stamp (the generation
        and ``tags``, the settings its vectors depend on) is current and it suits the memory
        budget; else ``build(stamp, folder)`` and saved for the next process."""

        def load() -> VectorIndex:
            # The generation is read before the vectors: a change in between makes the
            # saved file look stale (rebuilt next time), never current with old contents.
            stamp = json.dumps([self.stamp(), *tags])
            path = self.path(f"{name}.vix")
            try:
                index = VectorIndex.load(path)
            except (OSError, ValueError):
                index = None
            if index is None or index.stamp != stamp or not index.suits(memory):
                index = build(stamp, path.parent)
                with contextlib.suppress(OSError):  # a read-only index still answers
                    index.save(path)
            return index

        return self.memo(f"index:{name}", load)


def _digest(stamp: str, means: dict[str, np.ndarray]) -> str:
    """A checksum of a means file's contents: a damaged or edited file is rebuilt."""
    digest = hashlib.sha256(stamp.encode())
    for name in sorted(means):
        array = np.ascontiguousarray(means[name], dtype=np.float32)
        digest.update(name.encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()


def _read_means(path: Path, stamp: str) -> dict[str, np.ndarray] | None:
    """The saved means when the file is whole, current and unedited; else None."""
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data)) as saved:
            if str(saved["stamp"]) != stamp:
                return None
            means = {name: saved[name] for name in (*MEANS, CONFIDENCE)}
            digest = str(saved["digest"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return means if digest == _digest(stamp, means) else None
