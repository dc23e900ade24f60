"""Indexing: walk a folder, work out what changed, embed only that, store it in batches.

Stages, in one direction: files -> decoded images (worker threads) -> vectors
(the model, batched) -> captions (FAISS over the bank) -> storage (one
transaction per batch, so an interrupted run keeps what it finished).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.files import BadImage, FileInfo, decode, hash_file, walk
from imgsearch.storage import ImageRecord, Store

if TYPE_CHECKING:
    import torch

    from imgsearch.captions import CaptionBank, CaptionSettings
    from imgsearch.models import Model


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class IndexSummary:
    """What one indexing run did. Paths are relative to the indexed root."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Plan:
    """The difference between the folder and the index."""

    embed: list[FileInfo]  # new or changed content
    changed: set[str]  # of those, paths already in the index
    relocate: list[tuple[int, str, int, int]]  # (id, path, size, mtime): moved or touched
    moved: int
    remove: list[int]
    unchanged: int
    known_bad: list[Skipped]


def plan(root: Path, store: Store) -> Plan:
    """Compare the folder with the index using size and mtime first, content hashes second."""
    on_disk = {f.path: f for f in walk(root)}
    indexed = store.file_states()
    bad = store.skipped_files()
    embed: list[FileInfo] = []
    changed: set[str] = set()
    relocate: list[tuple[int, str, int, int]] = []
    known_bad: list[Skipped] = []
    unchanged = 0
    new: list[FileInfo] = []
    for path, info in on_disk.items():
        state = indexed.get(path)
        if state is None:
            previous = bad.get(path)
            if previous and previous[:2] == (info.size, info.mtime_ns):
                known_bad.append(Skipped(path, previous[2]))
            else:
                new.append(info)
        elif (state.size, state.mtime_ns) == (info.size, info.mtime_ns):
            unchanged += 1
        elif _safe_hash(root / path) == state.hash:  # touched, same content
            relocate.append((state.id, path, info.size, info.mtime_ns))
            unchanged += 1
        else:
            embed.append(info)
            changed.add(path)
    vanished = {p: s for p, s in indexed.items() if p not in on_disk}
    moved = 0
    if vanished and new:
        by_hash: dict[str, list[int]] = {}
        for state in vanished.values():
            by_hash.setdefault(state.hash, []).append(state.id)
        gone = {s.id for s in vanished.values()}
        for info in new:
            ids = by_hash.get(_safe_hash(root / info.path) or "")
            if ids:
                image_id = ids.pop()
                gone.discard(image_id)
                relocate.append((image_id, info.path, info.size, info.mtime_ns))
                moved += 1
            else:
                embed.append(info)
        remove = sorted(gone)
    else:
        embed.extend(new)
        remove = sorted(s.id for s in vanished.values())
    return Plan(embed, changed, relocate, moved, remove, unchanged, known_bad)


def _safe_hash(path: Path) -> str | None:
    try:
        return hash_file(path)
    except OSError:
        return None


@dataclass
class _Item:
    info: FileInfo
    pixels: torch.Tensor | None = None
    width: int = 0
    height: int = 0
    hash: str = ""
    error: str = ""


def _load(root: Path, info: FileInfo, model: Model) -> _Item:
    try:
        decoded = decode(root / info.path, model.input_size)
        pixels = model.preprocess(decoded.image)
    except BadImage as exc:
        return _Item(info, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the run
        return _Item(info, error=f"cannot decode: {exc}")
    return _Item(info, pixels, decoded.width, decoded.height, decoded.hash)


def default_workers() -> int:
    """Decode threads when none are asked for: one per core (decoding is the bottleneck)."""
    return max(1, min(32, os.cpu_count() or 2))


def _decoded(
    root: Path, files: list[FileInfo], model: Model, workers: int, batch_size: int = 0
) -> Iterator[_Item]:
    """Decode in worker threads, in order, a bounded number of files ahead.

    A whole batch plus a few files per worker stay queued, so the workers keep decoding
    while the main thread embeds and stores a batch (memory stays bounded all the same).
    """
    ahead = batch_size + 4 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[_Item]] = deque()
        queue = iter(files)
        try:
            for info in queue:
                pending.append(pool.submit(_load, root, info, model))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def embed_files(
    root: Path,
    files: list[FileInfo],
    model: Model,
    bank: CaptionBank,
    settings: CaptionSettings,
    store: Store,
    batch_size: int = 32,
    workers: int | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
    progress: bool = False,
) -> tuple[int, list[Skipped]]:
    """Embed ``files`` and store them, one transaction per batch. Returns (stored, skipped)."""
    import torch

    workers = workers or default_workers()
    skipped: list[Skipped] = []
    stored = 0
    bar = _progress_bar(len(files), progress)
    batch: list[_Item] = []

    def flush() -> None:
        nonlocal stored
        if not batch:
            return
        vectors = model.encode_images(torch.stack([item.pixels for item in batch]))
        captioned = bank.describe(vectors.text_space, settings)
        store.put_images(
            [
                ImageRecord(
                    path=item.info.path,
                    size=item.info.size,
                    mtime_ns=item.info.mtime_ns,
                    hash=item.hash,
                    width=item.width,
                    height=item.height,
                    image_vector=vectors.image[i],
                    caption_vector=captioned.vectors[i],
                    caption_ids=captioned.ids[i].tolist(),
                    caption_scores=captioned.scores[i].tolist(),
                )
                for i, item in enumerate(batch)
            ]
        )
        stored += len(batch)
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    try:
        for item in _decoded(root, files, model, workers, batch_size):
            if item.error:
                skip = Skipped(item.info.path, item.error)
                skipped.append(skip)
                store.mark_skipped(item.info.path, item.info.size, item.info.mtime_ns, item.error)
                if on_skip is not None:
                    on_skip(skip)
                if bar is not None:
                    bar.update(1)
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    return stored, skipped


def _progress_bar(total: int, enabled: bool):  # noqa: ANN202 - tqdm or None
    if not enabled or total == 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="indexing", file=sys.stderr, dynamic_ncols=True)
