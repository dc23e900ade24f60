"""Indexing: walk a folder, work out what changed, embed only that, store it in batches.

Stages, in one direction, each running at once on its own batch: files -> decoded images
(worker threads or processes, files handed over in chunks; nvJPEG beside them on a GPU)
-> vectors (the model, batched, on this thread) -> captions (the bank searched on the
model's device, a thread of its own) -> storage (one writer thread, one transaction per
batch, so an interrupted run keeps what it finished). Bounded queues between them: the
slowest stage alone sets the pace.

``update`` is the one place an indexing run writes the database from; how the files are
embedded (here, or on a Ray cluster) is the runner it is given. A query image goes through
the same ``describe_pixels`` as every indexed one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import signal
import stat
import sys
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from imgsearch.captions import CaptionBank, Captioned, CaptionSettings, bank_digest, read_bank
from imgsearch.colours import COLOUR_CAPTIONS, MIN_STRENGTH, ColourReading, read_colours
from imgsearch.errors import ImgsearchError
from imgsearch.files import (
    BAD_NAME,
    DEFAULT_LIMITS,
    OVER_LIMIT,
    SYMLINK,
    UNREADABLE_FOLDER,
    BadImage,
    FileInfo,
    Limits,
    Pixels,
    Preprocess,
    decode,
    hash_file,
    is_image_name,
    load_facts,
    shown,
    special_kind,
    valid_name,
    walk,
)
from imgsearch.gpudecode import MixedDecoder, nvjpeg_decoder, side_stream
from imgsearch.pipeline import ProcessStage, Stage
from imgsearch.relations import short_caption
from imgsearch.results import LISTED_MISSING, Description, IndexSummary, Skipped
from imgsearch.slabs import Job, Slabs
from imgsearch.storage import ImageRecord, Store

if TYPE_CHECKING:
    import torch

    from imgsearch.models import ImageEmbeddings, Model

# Embeds files and stores them through a BatchWriter: (stored, skipped). See ``update``.
Runner = Callable[[list[FileInfo], "BatchWriter"], None]


# How the summary counts skipped files: (what the reason starts with, one, several).
SKIP_KINDS = [
    (SYMLINK.split(" (")[0], "symbolic link", "symbolic links"),
    ("not a regular file", "not a regular file", "not regular files"),
    (UNREADABLE_FOLDER, "unreadable folder", "unreadable folders"),
    (BAD_NAME.split(":")[0], "name not valid UTF-8", "names not valid UTF-8"),
    (OVER_LIMIT, "over a size limit", "over the size limits"),
    ("cannot read", "unreadable file", "unreadable files"),
    (LISTED_MISSING, "listed but missing", "listed but missing"),
]


def skip_counts(skipped: list[Skipped]) -> str:
    """'2 symbolic links, 1 not a regular file': the skipped files by kind, most first."""
    counts: dict[tuple[str, str], int] = {}
    for skip in skipped:
        kind = next(
            ((one, many) for start, one, many in SKIP_KINDS if skip.reason.startswith(start)),
            ("bad image", "bad images"),
        )
        counts[kind] = counts.get(kind, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return ", ".join(f"{n} {one if n == 1 else many}" for (one, many), n in ordered)


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
    absent: list[str] = field(default_factory=list)  # listed, but no image file indexes there
    passed: list[Skipped] = field(default_factory=list)  # not files to index: links, FIFOs...


def plan(root: Path, store: Store, only: Collection[str] | None = None) -> Plan:
    """Compare the folder with the index using size and mtime first, content hashes second.

    ``only`` (paths relative to ``root``) limits the comparison to those files, for a run
    given a list of files: indexed files not in it are neither checked nor removed. A
    listed folder stands for everything below it, on disk and in the index (a folder
    deleted or moved away drops what was indexed in it).
    What the walk passes over (links, FIFOs, unreadable folders...) is in ``passed``; what
    is indexed below a folder that cannot be read is kept as it is.
    """
    found: list[tuple[str, str]] = []
    unreadable: list[str] = []
    if only is None:
        on_disk = {f.path: f for f in walk(root, found, unreadable)}
        indexed = store.file_states()
    else:
        on_disk = {f.path: f for f in listed(root, only, found, unreadable)}
        covered = covered_by(only)
        indexed = {p: s for p, s in store.file_states().items() if covered(p)}
    passed = [Skipped(path, reason) for path, reason in found]
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
    vanished = {p: s for p, s in indexed.items() if p not in on_disk and not _below(p, unreadable)}
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
    absent = []
    if only is not None:
        seen = {path for path, _ in found} | on_disk.keys() | indexed.keys()
        seen |= {folder for path in seen for folder in _folders_of(path)}
        absent = sorted(p for p in set(only) - seen if not (root / p).is_dir())
    return Plan(embed, changed, relocate, moved, remove, unchanged, known_bad, absent, passed)


def _below(path: str, folders: list[str]) -> bool:
    """Whether ``path`` is inside one of ``folders`` ('' is the root: everything is)."""
    return any(not f or path.startswith(f + "/") for f in folders)


def _folders_of(path: str) -> Iterator[str]:
    """The folders ``path`` lies in, nearest last: 'a/b/c.jpg' -> 'a', 'a/b'."""
    at = path.find("/")
    while at != -1:
        yield path[:at]
        at = path.find("/", at + 1)


def covered_by(only: Collection[str]) -> Callable[[str], bool]:
    """Whether a path is listed in ``only`` or lies in a listed folder."""
    listed_paths = set(only)
    return lambda path: (
        path in listed_paths or any(folder in listed_paths for folder in _folders_of(path))
    )


def listed(
    root: Path,
    paths: Collection[str],
    skipped: list[tuple[str, str]] | None = None,
    unreadable: list[str] | None = None,
) -> Iterator[FileInfo]:
    """The listed files that exist, filtered as ``walk`` filters a folder (image names only,
    nothing hidden, no symbolic links), without walking the folder; a listed folder is
    walked. Listed files passed over for what they are (a link, a FIFO, a name that is not
    UTF-8) go to ``skipped``, unreadable folders below a listed one to ``unreadable``."""
    for path in sorted(paths):
        if any(part.startswith(".") for part in path.split("/")):
            continue
        if not is_image_name(path):
            yield from _listed_folder(root, path, skipped, unreadable)
            continue
        if not valid_name(path):
            if skipped is not None:
                skipped.append((shown(path), BAD_NAME))
            continue
        try:
            st = os.stat(root / path, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):  # a folder named like an image: 'holiday.jpg/'
            yield from _listed_folder(root, path, skipped, unreadable)
        elif stat.S_ISREG(st.st_mode):
            yield FileInfo(path, st.st_size, st.st_mtime_ns)
        elif skipped is not None:
            reason = SYMLINK if stat.S_ISLNK(st.st_mode) else None
            skipped.append((path, reason or f"not a regular file ({special_kind(st.st_mode)})"))


def _listed_folder(
    root: Path,
    path: str,
    skipped: list[tuple[str, str]] | None,
    unreadable: list[str] | None,
) -> Iterator[FileInfo]:
    """The image files below a listed folder, as ``walk`` finds them; nothing for a path
    that is not a folder (or is a link to one, never followed)."""
    if not valid_name(path):
        return
    try:
        st = os.stat(root / path, follow_symlinks=False)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    found: list[tuple[str, str]] = []
    cannot: list[str] = []
    for info in walk(root / path, found, cannot):
        yield FileInfo(f"{path}/{info.path}", info.size, info.mtime_ns)
    if skipped is not None:
        skipped.extend((f"{path}/{p}" if p != "." else path, why) for p, why in found)
    if unreadable is not None:
        unreadable.extend(f"{path}/{p}" if p else path for p in cannot)


def _safe_hash(path: Path) -> str | None:
    try:
        return hash_file(path)
    except OSError:
        return None


@dataclass
class Loaded:
    """A file to embed and what a decode worker made of it."""

    info: FileInfo
    pixels: Pixels


# Cores left beside nvJPEG to the process feeding the GPU (its thread feeding nvJPEG, the
# model's thread, the caption search) and to the reader and writer processes. With a decode
# process on every core the GPU side starved (the H200: 1,536 of 8,192 photos at 640x480).
GPU_SIDE_CORES = 3


def default_workers(beside_gpu: bool = False) -> int:
    """Decode workers when none are asked for: one per core (decoding is the bottleneck),
    less ``GPU_SIDE_CORES`` beside nvJPEG."""
    cores = max(1, min(32, os.cpu_count() or 2))
    return max(1, cores - GPU_SIDE_CORES) if beside_gpu else cores


def use_processes(model: Model) -> bool:
    """Decode in processes when an accelerator runs the model.

    The main thread then has to batch, search captions and write to the database hundreds
    of times a second; decode threads would hold the GIL against it. On a CPU the model
    is the bottleneck and threads cost less (no process start, no copies).
    """
    return device_type(model) != "cpu"


def _quiet_worker() -> None:
    """Ctrl-C is the parent's to handle: workers stop when the pool shuts down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_POOLS: dict[tuple[int, str], ProcessPoolExecutor] = {}

# Reader processes beside nvJPEG (``gpudecode.read_headers``): they read, hash and parse the
# headers of the GPU's files, so the process feeding the GPU does none of it. About 0.2 ms a
# 640x480 file; a 12 MP one costs several (hashing 3 MB, its bytes sent back), and on the
# H200 two readers fed nvJPEG only 113 of those a second, beside 14 busy decode processes.
GPU_READERS = 4


def _process_pool(workers: int, purpose: str = "decode") -> ProcessPoolExecutor:
    """One pool per process, purpose and width, kept for the next run: starting 16
    interpreters costs a second or more, which a server or a second ``add()`` should not
    pay again."""
    pool = _POOLS.get((workers, purpose))
    if pool is None:
        # spawn: a forked child of a process running torch threads can deadlock.
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, context, initializer=_quiet_worker)
        _roomy_results(pool)
        _POOLS[workers, purpose] = pool
    return pool


def _roomy_results(pool: ProcessPoolExecutor) -> None:
    """Let the pipe that brings the workers' results back hold as much as Linux allows for
    (1 MB unprivileged, not 64 KB): a chunk of 32 decoded photos is 4.8 MB, read by one
    thread of this process that takes the interpreter lock again after every pipe-full, while
    the worker waits to finish writing it; beside the model's, the caption search's and the
    GPU feeder's threads each take could cost milliseconds. Best effort: elsewhere, or
    should the pool's insides change, the pipe keeps its size."""
    try:
        import fcntl

        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        reader = pool._result_queue._reader  # type: ignore[attr-defined]
        fcntl.fcntl(reader.fileno(), fcntl.F_SETPIPE_SZ, min(limit, 4 << 20))
    except (ImportError, OSError, ValueError, AttributeError):
        pass


def mixed_decoder(
    root: Path,
    files: list[FileInfo],
    preprocess: Preprocess,
    decode: Callable,
    limits: Limits,
    batch_size: int,
    workers: int,
) -> MixedDecoder:
    """nvJPEG beside ``workers`` CPU decode processes, fed by the reader processes: the
    indexer's decode stage on a GPU (and the benchmark's decode_alone)."""
    pool = _process_pool(workers)
    chunk = chunk_size(len(files), workers, True)
    readers = _process_pool(GPU_READERS, "read")
    return MixedDecoder(
        root, files, preprocess, pool, decode, limits, batch_size, workers, chunk, readers
    )


def _chunks(files: list[FileInfo], target: int) -> Iterator[list[FileInfo]]:
    """``files`` in tasks of 1, 2, 4... up to ``target`` files: the first photos reach the
    model soon, and then each task is large enough that handing it over costs little."""
    start, size = 0, 1
    while start < len(files):
        yield files[start : start + size]
        start += size
        size = min(target, size * 2)


def chunk_size(files: int, workers: int, processes: bool) -> int:
    """Files per decode task: 16-32 for processes (a file a task capped 16 of them at about
    2,000 files/s), a few for threads; never so many that some workers get none."""
    most = 32 if processes else 4
    return max(1, min(most, files // (4 * workers) or 1))


def _decoded(
    root: Path,
    files: list[FileInfo],
    model: Model,
    workers: int,
    batch_size: int = 0,
    processes: bool | None = None,
    limits: Limits = DEFAULT_LIMITS,
    chunk: int | None = None,
) -> Iterator[Loaded]:
    """Decode in workers, in order, a bounded number of files ahead, in chunks.

    A whole batch plus a few chunks per worker stay queued, so the workers keep decoding
    while the model, the caption search and the writer work (memory stays bounded all the
    same). ``model`` is anything with the model's ``preprocess`` (and ``device``, where
    ``processes`` is not given).
    """
    if processes is None:
        processes = use_processes(model)
    target = chunk or chunk_size(len(files), workers, processes)
    ahead = batch_size + 2 * workers * target
    threads = None
    if processes:
        pool: Executor = _process_pool(workers)
    else:
        pool = threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    # Threads share this process's memory: only processes need slots.
    slabs = Slabs(ahead // target + 2 if processes else 0, target, model.preprocess.crop)
    pending: deque[tuple[list[FileInfo], Job]] = deque()
    queued = 0
    try:
        for part in _chunks(files, target):
            paths = [root / info.path for info in part]
            pending.append((part, slabs.submit(pool, paths, model.preprocess, limits)))
            queued += len(part)
            while queued >= ahead:
                done, job = pending.popleft()
                queued -= len(done)
                yield from map(Loaded, done, job.result())
        while pending:
            done, job = pending.popleft()
            yield from map(Loaded, done, job.result())
    except BrokenProcessPool:
        _POOLS.pop((workers, "decode"), None)
        raise
    finally:
        for _, job in pending:
            job.cancel()
        slabs.close()
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)


# The concept bridge (measured on both development sets, see ConceptBridge): class
# probabilities softened to T=3, and how fast a caption's match falls with its distance from
# a class prompt (exp((cos - 1) / 0.05)).
CONCEPT_TEMPERATURE = 3.0
CONCEPT_KERNEL = 0.05

# Templates of the caption bank that short_caption leaves on (scripts/make_caption_bank.py).
_WEARING = re.compile(r"^(?:an?\s+)?person\s+wearing\s+(.+)$", re.IGNORECASE)
_ON_TABLE = re.compile(r"^(.+?)\s+on\s+a\s+table$", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:an?|the)\s+", re.IGNORECASE)


def concept_name(caption: str) -> str:
    """The concept a bank caption puts in a template, case-folded: "a photo of a person
    wearing a hat", "a close-up photo of a hat" -> "hat"."""
    name = short_caption(caption)
    for template in (_WEARING, _ON_TABLE):
        match = template.match(name)
        if match:
            name = _ARTICLE.sub("", match.group(1)).strip() or name
    return name.casefold()


class ConceptBridge:
    """From a classifier's class probabilities to a bag of the bank's concepts.

    A bank caption j matches an image by s_j = sum_c p_c A_cj, where p is the softmax of
    the logits at ``temperature`` and A_cj = exp((cos(t_c, b_j) - 1) / ``kernel``) how
    close caption j is to class c's prompt vector t_c. The bank's captions group into
    concepts (one name in several templates, ``concept_name``); an image's bag holds, for
    each of its ``top`` best concepts, the best s_j among that concept's captions, scaled
    to unit length. A is fixed per (model, bank): ``concept_bridge`` makes it once.
    """

    def __init__(
        self,
        class_vectors: np.ndarray,
        texts: list[str],
        caption_vectors: np.ndarray,
        temperature: float = CONCEPT_TEMPERATURE,
        kernel: float = CONCEPT_KERNEL,
        saved: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
    ):
        self.temperature = temperature
        if saved is not None:  # (kernel, concept, names) as ``cached_bridge`` keeps them
            self.kernel, self.concept, self.names = saved
        else:
            cosines = (
                np.asarray(class_vectors, np.float64) @ np.asarray(caption_vectors, np.float64).T
            )
            self.kernel = np.exp((cosines - 1.0) / kernel).astype(np.float32)  # (classes, caps)
            ids: dict[str, int] = {}
            self.concept = np.array([ids.setdefault(concept_name(t), len(ids)) for t in texts])
            self.names = list(ids)
        # Captions ordered by concept, and where each concept's run starts: one reduceat
        # takes every concept's best caption.
        self._order = np.argsort(self.concept, kind="stable")
        runs = np.diff(self.concept[self._order]) != 0
        self._starts = np.flatnonzero(np.r_[True, runs])

    @property
    def size(self) -> int:
        """How many concepts the bank has: the length of a bag."""
        return len(self.names)

    def caption_scores(self, probs: np.ndarray) -> np.ndarray:
        """Every bank caption's match score s, (B, captions), from probabilities at T=1."""
        # softmax(z / T) is p^(1 / T) rescaled: the probabilities at T=1 are enough.
        tempered = np.power(np.atleast_2d(np.asarray(probs, np.float64)), 1.0 / self.temperature)
        tempered /= np.maximum(tempered.sum(axis=1, keepdims=True), 1e-300)
        return tempered.astype(np.float32) @ self.kernel

    def bags(self, probs: np.ndarray, top: int) -> np.ndarray:
        """Unit concept bags (B, concepts): each concept's best caption score, the ``top``
        best concepts kept."""
        scores = self.caption_scores(probs)
        best = np.maximum.reduceat(scores[:, self._order], self._starts, axis=1)
        best = np.maximum(best, 0.0)
        if top < best.shape[1]:
            cut = np.argpartition(-best, top - 1, axis=1)[:, top:]
            np.put_along_axis(best, cut, 0.0, axis=1)
        norms = np.linalg.norm(best, axis=1, keepdims=True)
        return (best / np.maximum(norms, 1e-12)).astype(np.float32)


_BRIDGES: dict[tuple[str, str], ConceptBridge] = {}


def concept_bridge(model: Model, bank: CaptionBank) -> ConceptBridge | None:
    """The model's bridge to the bank's concepts, made once per (model, bank) in a process;
    None for a model without classes (CLIP)."""
    classes = getattr(model, "class_text_vectors", None)
    if classes is None:
        return None
    key = (model.name, bank_digest(bank.texts))
    if key not in _BRIDGES:
        if len(_BRIDGES) >= 4:
            _BRIDGES.clear()
        _BRIDGES[key] = cached_bridge(classes, bank.texts, bank.vectors)
    return _BRIDGES[key]


# Bump when what a bridge is made of changes (concept_name, the kernel): saved ones are stale.
BRIDGE_VERSION = 1


def cached_bridge(classes: np.ndarray, texts: list[str], vectors: np.ndarray) -> ConceptBridge:
    """The bridge of these class and caption vectors, kept in the user cache: making it
    (a float64 product of 1000 x 6,197 cosines, and every caption's concept) took 0.8-1.5 s
    of each query photo from outside the index on a busy 2-core machine; reading it back
    takes a few tens of ms."""
    from imgsearch.config import cache_dir

    digest = hashlib.sha256(
        json.dumps([BRIDGE_VERSION, CONCEPT_TEMPERATURE, CONCEPT_KERNEL, texts]).encode()
    )
    digest.update(np.ascontiguousarray(classes, np.float32).tobytes())
    digest.update(np.ascontiguousarray(vectors, np.float32).tobytes())
    path = cache_dir() / f"bridge-{digest.hexdigest()[:32]}.npz"
    try:
        with np.load(path) as saved:
            kernel, concept, names = saved["kernel"], saved["concept"], saved["names"].tolist()
        if kernel.shape == (len(classes), len(texts)) and concept.shape == (len(texts),):
            return ConceptBridge(classes, texts, vectors, saved=(kernel, concept, names))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass
    bridge = ConceptBridge(classes, texts, vectors)
    with contextlib.suppress(OSError):  # a read-only cache only costs time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
        names = np.array(bridge.names, dtype=str)
        np.savez(tmp, kernel=bridge.kernel, concept=bridge.concept, names=names)
        os.replace(tmp, path)
    return bridge


def describe_pixels(
    pixels: np.ndarray, model: Model, bank: CaptionBank, settings: CaptionSettings
) -> tuple[ImageEmbeddings, Captioned]:
    """A uint8 (B, H, W, 3) batch made by the model's preprocessing to its vectors and its
    top-N captions (and concept bags, when the model has class probabilities and the
    settings ask for bags): what an indexed photo and a query photo alike are made of.
    """
    vectors = model.encode_images(pixels)
    return vectors, describe_vectors(vectors, pixels, model, bank, settings)


def describe_vectors(
    vectors: ImageEmbeddings,
    pixels: np.ndarray | torch.Tensor,
    model: Model,
    bank: CaptionBank,
    settings: CaptionSettings,
    threads: int | None = None,
) -> Captioned:
    """The caption side of ``describe_pixels``: the bank searched on the model's device
    (``CaptionBank.top``; ``threads``: FAISS's threads on a CPU), then combined.

    For a model that cannot see colour (its backend says ``pixel_colours``), and a bank that
    has the colour captions, the colours come from the pixels instead (``with_colours``).
    """
    colour_ids = pixel_colour_ids(model, bank)
    if not colour_ids:
        captioned = bank.describe(vectors.text_space, settings, model.device, threads)
    else:
        n = min(settings.top_n, len(bank.texts))
        scores, ids = bank.top(vectors.text_space, n + len(colour_ids), model.device, threads)
        pixels = _host(pixels)
        rows = [
            with_colours(read_colours(pixels[i]), scores[i], ids[i], colour_ids, n)
            for i in range(len(ids))
        ]
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        scores = np.array([r[1] for r in rows], dtype=np.float32)
        captioned = Captioned(ids, scores, bank.combine(ids, scores, settings))
    if settings.concepts and vectors.class_probs is not None:
        bridge = concept_bridge(model, bank)
        if bridge is not None:
            captioned.concepts = bridge.bags(vectors.class_probs, settings.concepts)
            captioned.confidence = vectors.class_probs.max(axis=1)
    return captioned


def _host(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pixels as a numpy array in this process's memory (a GPU-decoded batch is copied)."""
    if isinstance(pixels, np.ndarray):
        return pixels
    return pixels.cpu().numpy() if hasattr(pixels, "cpu") else np.asarray(pixels)


def pixel_colour_ids(model: Model, bank: CaptionBank) -> dict[str, int]:
    """The bank's colour captions by text, when the model needs colours from the pixels.

    Looked up in the bank itself, and only a bank with all of them counts: an index made
    with an older bank (which had "a dark photo" but no "a red object") keeps its captions
    exactly as before.
    """
    from imgsearch.models import backend

    if not backend(model.name).pixel_colours:
        return {}
    found = bank.ids_of(COLOUR_CAPTIONS)
    return found if len(found) == len(COLOUR_CAPTIONS) else {}


# Measured on clothing-small (benchmarks/colour_quality.py): at gain 1 (a full-strength
# colour ties the best match) "a red dress" found 3 red photos in its top 10, at 2 it finds
# 8; higher gains find more still but make colour outweigh what the photo shows (photo-to-
# photo precision by garment type fell from 0.57 without colours to 0.50 at 2, 0.43 at 3).
COLOUR_GAIN = 2.0


def with_colours(
    reading: ColourReading,
    scores: np.ndarray,
    ids: np.ndarray,
    colour_ids: dict[str, int],
    n: int,
    gain: float = COLOUR_GAIN,
) -> tuple[list[int], list[float]]:
    """One image's top-n (ids, scores), best first: the model's own matches without any
    colour caption (it cannot see colour), plus the colour captions its pixels prove.

    A proven caption of strength t (at least ``MIN_STRENGTH``) is scored on this image's
    own scale: worst + gain * (t - MIN_STRENGTH) / (1 - MIN_STRENGTH) * (best - worst), from
    its n-th match score, where a doubtful colour weighs next to nothing, up to (gain 2) as
    far above its best match as that is above its n-th: a clear colour then leads the
    softmax, which a text query such as "a red dress" needs (see ``COLOUR_GAIN``). They
    replace the weakest matches, so every image keeps exactly n captions (the stored lists,
    the Ray batches and ``combine`` are all n wide); the captions they push out carry next
    to no weight under the softmax anyway.
    """
    colour_set = set(colour_ids.values())
    own = [(int(i), float(s)) for i, s in zip(ids, scores) if int(i) not in colour_set]
    scale = own or [(int(ids[0]), float(scores[0]))]
    best, worst = scale[0][1], scale[min(n, len(scale)) - 1][1]
    proven = [
        (colour_ids[text], worst + gain * (t - MIN_STRENGTH) / (1 - MIN_STRENGTH) * (best - worst))
        for text, t in reading.captions()
        if text in colour_ids
    ][:n]
    kept = own[: n - len(proven)]
    if len(kept) + len(proven) < n:  # a tiny bank: fill up with the model's colour matches
        used = {i for i, _ in proven}
        spare = [(int(i), float(s)) for i, s in zip(ids, scores) if int(i) in colour_set]
        kept += [c for c in spare if c[0] not in used][: n - len(kept) - len(proven)]
    row = sorted(kept + proven, key=lambda c: -c[1])
    return [i for i, _ in row], [s for _, s in row]


def embed_batch(
    items: list[Loaded], model: Model, bank: CaptionBank, settings: CaptionSettings
) -> list[ImageRecord]:
    """Decoded files to the records stored for them: the model, then the caption bank.

    The single-process indexer and the Ray model workers both call this (the first with
    the model and the caption search in stages of their own), so both store the same
    vectors and captions for the same files.
    """
    pixels = stack_pixels(items, model)
    vectors, captioned = describe_pixels(pixels, model, bank, settings)
    return records(items, vectors, captioned)


def stack_pixels(items: list[Loaded], model: Model) -> np.ndarray | torch.Tensor:
    """One (B, H, W, 3) uint8 batch; a tensor on the model's device where any of the
    photos was decoded there (the GPU path), else a numpy array."""
    arrays = [item.pixels.array for item in items]
    host = [i for i, a in enumerate(arrays) if isinstance(a, np.ndarray)]
    if len(host) == len(arrays):
        return np.stack(arrays)
    import torch

    # The CPU-decoded photos reach the device in one copy, not one each (a copy per photo
    # was a few thousand small transfers a second from the thread that runs the model).
    device = [i for i, a in enumerate(arrays) if not isinstance(a, np.ndarray)]
    made = [arrays[i] for i in device]
    on_device = torch.stack(made)  # type: ignore[arg-type]
    if on_device.is_cuda:  # made on nvJPEG's stream: not to be reused before this copy runs
        current = torch.cuda.current_stream(on_device.device)
        for tensor in made:
            tensor.record_stream(current)  # type: ignore[union-attr]
    if not host:
        return on_device
    batch = on_device.new_empty((len(arrays), *on_device.shape[1:]))
    batch[device] = on_device
    batch[host] = torch.from_numpy(np.stack([arrays[i] for i in host])).to(batch.device)
    return batch


def records(
    items: list[Loaded], vectors: ImageEmbeddings, captioned: Captioned
) -> list[ImageRecord]:
    """What is stored for each of ``items``: its file, its vectors and its captions."""
    return [
        ImageRecord(
            path=item.info.path,
            size=item.info.size,
            mtime_ns=item.info.mtime_ns,
            hash=item.pixels.hash,
            width=item.pixels.width,
            height=item.pixels.height,
            image_vector=vectors.image[i],
            caption_vector=captioned.vectors[i],
            caption_ids=captioned.ids[i].tolist(),
            caption_scores=captioned.scores[i].tolist(),
            concept_vector=None if captioned.concepts is None else captioned.concepts[i],
            class_confidence=None if captioned.confidence is None else captioned.confidence[i],
            facts=item.pixels.facts,
        )
        for i, item in enumerate(items)
    ]


# A file that failed, as ``Store.put_images`` remembers it: (path, size, mtime_ns, reason).
SkipRow = tuple[str, int, int, str]


def skip_rows(bad: Sequence[tuple[FileInfo, str]]) -> list[SkipRow]:
    return [(info.path, info.size, info.mtime_ns, reason) for info, reason in bad]


class BatchWriter:
    """The one place a run writes from: each batch's records and the files that failed
    since the last one, in one transaction, the bad files reported. With Ray, only the
    driver holds one, so a worker that dies and is retried never writes anything twice.

    ``stages`` gathers the seconds each stage of the run spent (see ``local_runner``)."""

    def __init__(
        self,
        store: Store,
        total: int,
        on_skip: Callable[[Skipped], None] | None = None,
        progress: bool = False,
    ):
        self.store = store
        self.on_skip = on_skip
        self.stored = 0
        self.skipped: list[Skipped] = []
        self.stages: dict[str, float] = {}
        self.bar = _progress_bar(total, progress)

    def put(self, records: list[ImageRecord], bad: Sequence[tuple[FileInfo, str]] = ()) -> None:
        self.put_rows(records, skip_rows(bad))

    def put_rows(self, records: list[ImageRecord], rows: Sequence[SkipRow]) -> None:
        self.store.put_images(records, rows)
        self.written(records, rows)

    def written(self, records: Sequence[ImageRecord], rows: Sequence[SkipRow]) -> None:
        """Count a batch the database has taken (here, or in a writer process): its
        records, and its failed files (``skip_rows``) reported."""
        self.stored += len(records)
        for path, _, _, reason in rows:
            skip = Skipped(path, reason)
            self.skipped.append(skip)
            if self.on_skip is not None:
                self.on_skip(skip)
        if self.bar is not None:
            self.bar.update(len(records) + len(rows))

    def skip(self, info: FileInfo, reason: str) -> None:
        self.put([], [(info, reason)])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# A run beside an accelerator with at least this many files writes from a child process
# (``writer_process``): there the writer's Python time (~150 us an image: rows, executemany)
# would hold the GIL against the GPU's feeder, the model and the caption search, while
# starting the process costs about a second, which only a long run wins back.
WRITER_PROCESS_FILES = 2048

# Off by default until measured to pay. Its runs on the H200 were slower than the thread's
# while each started its child (a second or more, which the first batches waited for);
# with a spare child ready (``pipeline.ProcessStage``) it measured 1.00x the thread for
# ViT-B/32 and 1.08x for ViT-L/14 at 640x480, one sample each (docs/performance.md).
WRITER_PROCESS_AUTO = False

# Batches sent to the writer process and not yet committed: enough to keep it busy while
# the next batch is made, few enough that an interrupted run loses little work.
WRITER_PROCESS_DEPTH = 3


def use_writer_process(embedding: Embedding, files: int, store: Store) -> bool:
    """Whether a run of ``files`` files writes from a child process: beside an accelerator
    (as ``use_processes``, known before the model loads), for a run long enough to pay for
    starting one, and for a store another process can open (``Store.location``); and only
    while ``WRITER_PROCESS_AUTO`` says so."""
    if not WRITER_PROCESS_AUTO or files < WRITER_PROCESS_FILES or store.location is None:
        return False
    return not embedding.on_cpu()


def _write_stage(
    writer: BatchWriter, chosen: bool
) -> Stage[tuple[list[ImageRecord], list[SkipRow]]] | ProcessStage:
    """The writer stage: a thread committing each batch, or (``chosen``) a child process
    doing it while this process counts what it committed (``BatchWriter.written``)."""
    if not chosen:
        return Stage("write", lambda job: writer.put_rows(*job))
    if writer.store.location is None:
        raise ValueError("a writer process needs a store opened with Store.open")
    opener = functools.partial(_writing, writer.store.location)
    return ProcessStage("write", opener, WRITER_PROCESS_DEPTH, lambda job: writer.written(*job))


@contextmanager
def _writing(db: str | os.PathLike) -> Iterator[Callable[[tuple], None]]:
    """In the writer process: the index at ``db`` opened again, its ``put_images`` taking
    (records, skip rows) batches. The parent holds the writer lock; this only writes rows.
    A SQLite index keeps one idle connection open meanwhile, as ``Store.writer`` does."""
    store = Store.open(db)
    try:
        keep = None if store.is_postgres else store.engine.raw_connection()
        try:
            yield lambda job: store.put_images(*job)
        finally:
            if keep is not None:
                keep.close()
    finally:
        store.close()


@dataclass
class _Job:
    """A batch between the model and the writer."""

    items: list[Loaded]
    bad: list[tuple[FileInfo, str]]
    pixels: np.ndarray | torch.Tensor | None = None
    vectors: ImageEmbeddings | None = None


def local_runner(
    root: Path,
    embedding: Embedding,
    batch_size: int = 32,
    workers: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    gpu_decode: bool | None = None,
    writer_process: bool | None = None,
) -> Runner:
    """Embed in this process, in overlapping stages: decode workers (threads, or processes
    beside a GPU, and nvJPEG on the GPU where torchvision is installed), the model on this
    thread, the caption search on a thread of its own, and one writer thread committing
    each batch with the files that failed (``pipeline.Stage``, each behind a short queue).
    A file over ``limits`` is skipped before it is decoded. On a CPU the decoders start
    while the model loads. ``gpu_decode``: None decides by itself (CUDA and torchvision).

    ``writer_process``: commit from a child process instead (``pipeline.ProcessStage``;
    this process keeps counting, the progress bar and ``on_skip``); None decides by itself
    (``use_writer_process``: off while ``WRITER_PROCESS_AUTO`` is)."""

    def run(files: list[FileInfo], writer: BatchWriter) -> None:
        began = time.perf_counter()
        loading = _Loading(embedding, quick_model(embedding, len(files)))
        stages = writer.stages
        for key in ("read", "decode", "model", "captions", "write", "waiting"):
            stages.setdefault(key, 0.0)
        chosen = writer_process
        if chosen is None:
            chosen = use_writer_process(embedding, len(files), writer.store)
        write = _write_stage(writer, chosen)  # a writer process starts while the model loads
        try:
            decoded, mixed = _decoding(
                root, files, embedding, loading, workers, batch_size, limits, gpu_decode
            )
            # The first decoded photo is waited for here, while the model loads on its
            # thread: the decoders have started, and keep the first batch coming meanwhile.
            first = next(decoded, None)
            decoded = itertools.chain([] if first is None else [first], decoded)
            model = loading.result()
            embedding.ran_with = model
        except BaseException:
            write.cancel()
            raise
        bank, settings = embedding.bank, embedding.settings
        on_cuda = device_type(model) == "cuda"
        threads = None if on_cuda else 1  # see CaptionBank.top

        def search(job: _Job) -> None:
            if job.items:
                assert job.vectors is not None and job.pixels is not None
                vectors = job.vectors
                with side_stream(model.device if on_cuda else None):  # waits for it alone
                    captioned = describe_vectors(
                        vectors, job.pixels, model, bank, settings, threads
                    )
                job.pixels = None
                write.put((records(job.items, vectors, captioned), skip_rows(job.bad)))
            else:
                write.put(([], skip_rows(job.bad)))

        captions: Stage = Stage("captions", search)
        few = 1 if len(files) < min(batch_size, FEW_FILES) else None

        def hand_on(job: _Job, vectors: Callable[[], ImageEmbeddings] | None) -> None:
            if vectors is not None:
                start = time.perf_counter()
                job.vectors = vectors()
                stages["model"] += time.perf_counter() - start
            stages["waiting"] += captions.put(job)

        try:
            with _model_threads(model, few):
                # Each batch is handed on once the next is queued on the model's device
                # (``Model.encode_images_later``): on CUDA the next batch's stacking and
                # copying overlap this one's kernels rather than leaving the GPU idle.
                queued: tuple[_Job, Callable[[], ImageEmbeddings] | None] | None = None
                for job, waited in _batches(decoded, batch_size):
                    stages.setdefault("start", time.perf_counter() - began)
                    stages["waiting"] += waited
                    for item in job.items:
                        stages["read"] += item.pixels.read_s
                        stages["decode"] += item.pixels.decode_s
                    vectors = None
                    if job.items:
                        start = time.perf_counter()
                        job.pixels = stack_pixels(job.items, model)
                        vectors = model.encode_images_later(job.pixels)
                        stages["model"] += time.perf_counter() - start
                    if queued is not None:
                        hand_on(*queued)
                    queued = (job, vectors)
                if queued is not None:
                    hand_on(*queued)
            drained = time.perf_counter()
            captions.close()
            write.close()
            stages["drain"] = time.perf_counter() - drained
        except BaseException:
            captions.cancel()
            write.cancel()
            raise
        finally:
            stages["captions"] += captions.busy
            stages["write"] += write.busy
            if mixed is not None:
                stages["read"] += mixed.seconds["read"]
                stages["decode"] += mixed.seconds["decode"]
                for key in ("gpu_decode", "read_wait", "gpu_emit"):
                    stages[key if key.startswith("gpu") else f"gpu_{key}"] = mixed.seconds[key]
                stages.update({f"files_{k}": float(v) for k, v in mixed.counts.items()})

    return run


# A run with fewer files than this (a watcher's batch, a re-run after a few changes) runs
# the model on one CPU thread. Threads pay off on full batches only; for one photo, on a
# busy 2-core machine, two of them spinning against each other took 2.4 s instead of 0.04.
FEW_FILES = 16


@contextmanager
def _model_threads(model: Model, threads: int | None) -> Iterator[None]:
    """Run a CPU model with ``threads`` torch threads (None: as they are) meanwhile."""
    if threads is None or device_type(model) != "cpu":
        yield
        return
    from imgsearch.models import torch_threads

    with torch_threads(threads):
        yield


def _batches(decoded: Iterator[Loaded], batch_size: int) -> Iterator[tuple[_Job, float]]:
    """Decoded files in batches of ``batch_size`` good ones, each with the files that failed
    since the one before; and the seconds spent waiting for the decoders."""
    job = _Job([], [])
    waited = 0.0
    while True:
        start = time.perf_counter()
        item = next(decoded, None)
        waited += time.perf_counter() - start
        if item is None:
            break
        if item.pixels.error:
            job.bad.append((item.info, item.pixels.error))
            continue
        job.items.append(item)
        if len(job.items) >= batch_size:
            yield job, waited
            job, waited = _Job([], []), 0.0
    if job.items or job.bad:
        yield job, waited


# A run of fewer files than this on a CPU embeds them with the model's ONNX export where one
# is saved already (an earlier run or query made it), and never imports torch: importing
# torch and transformers and loading CLIP's weights took 3.4 of its 4.4 s to the first photo
# on the 2-core machine (AMX), where the export embeds about 30 photos a second against
# bfloat16 torch's 85 end to end, so it stays ahead up to about 160 photos; without AMX
# (torch in int8 at 16 a second, 9 s to start) further still.
QUICK_RUN_FILES = 128


def quick_model(embedding: Embedding, files: int) -> Model | None:
    """The model's saved ONNX export for a short run on this CPU (``QUICK_RUN_FILES``); None
    where the model itself runs it (loaded already, here or by another index of this
    process; a long run, an accelerator, no export)."""
    if embedding.loaded or files >= QUICK_RUN_FILES or not embedding.on_cpu():
        return None
    from imgsearch.models import loaded_here

    if loaded_here(embedding.model_name):
        return None
    threads = 1 if files < FEW_FILES else default_workers()
    if threads not in embedding.exports:  # kept: a watcher's every batch would read it again
        from imgsearch.models import saved_export

        embedding.exports[threads] = saved_export(embedding.model_name, threads)
    return embedding.exports[threads]


def device_type(model: Model) -> str:
    """'cpu', 'cuda'...: of a torch model's device, or of an ONNX export's ('cpu')."""
    return str(getattr(model.device, "type", model.device))


class _Loading:
    """The model loading on a thread of its own, so that decoding starts meanwhile; or, for
    a short run, the model's ONNX export, read at once (``quick_model``)."""

    def __init__(self, embedding: Embedding, quick: Model | None = None):
        self.embedding = embedding
        self.quick = quick
        self.error: BaseException | None = None
        self._thread = None
        if quick is None and not embedding.loaded:
            self._thread = threading.Thread(target=self._load, name="imgsearch-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        try:
            self.embedding.model  # noqa: B018 - loads it
        except BaseException as exc:  # noqa: BLE001 - raised where the model is wanted
            self.error = exc

    def result(self) -> Model:
        if self.quick is not None:
            return self.quick
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(0.1)  # a short join: Ctrl-C still lands here
        if self.error is not None:
            raise self.error
        return self.embedding.model


def _decoding(
    root: Path,
    files: list[FileInfo],
    embedding: Embedding,
    loading: _Loading,
    workers: int | None,
    batch_size: int,
    limits: Limits,
    gpu_decode: bool | None,
) -> tuple[Iterator[Loaded], MixedDecoder | None]:
    """The decode stage: threads started at once where the model will run on this CPU
    (they decode while it loads), else processes beside the loaded model's accelerator,
    with nvJPEG on the GPU taking its share where torchvision is installed. ``workers``:
    None for one per core, less ``GPU_SIDE_CORES`` beside nvJPEG."""
    chosen = workers or default_workers()
    # A short run's ONNX export says it too, without transformers reading the checkpoint.
    preprocess = loading.quick.preprocess if loading.quick else embedding.preprocess
    if preprocess is not None and embedding.on_cpu():
        stub = _Preprocessing(preprocess)
        return _decoded(root, files, stub, chosen, batch_size, False, limits), None
    model = loading.result()
    if gpu_decode is not False and device_type(model) == "cuda":
        decode = nvjpeg_decoder(model.device)
        if decode is not None:
            chosen = workers or default_workers(beside_gpu=True)
            mixed = mixed_decoder(root, files, model.preprocess, decode, limits, batch_size, chosen)
            return (Loaded(info, pixels) for info, pixels in mixed), mixed
    return _decoded(root, files, model, chosen, batch_size, limits=limits), None


@dataclass(frozen=True)
class _Preprocessing:
    """What the decode stage reads of a model, before the model itself is loaded."""

    preprocess: Preprocess


def update(
    root: Path,
    store: Store,
    runner: Runner,
    only: set[str] | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
    progress: bool = False,
) -> IndexSummary:
    """Bring the index in line with the folder: add, update, move and drop images. The one
    place an indexing run writes from; the caller holds the writer lock.

    ``only`` limits the run to those files (relative to the root): listed files are added,
    updated or dropped as usual, indexed files not listed stay as they are.
    """
    began = time.perf_counter()
    todo = plan(root, store, only)
    planned = time.perf_counter()
    summary = IndexSummary(unchanged=todo.unchanged, moved=todo.moved)
    summary.skipped.extend(todo.known_bad)
    missing = [Skipped(p, LISTED_MISSING) for p in todo.absent]
    for skip in todo.passed + missing:
        summary.skipped.append(skip)
        if on_skip is not None:
            on_skip(skip)
    store.update_files(todo.relocate)
    summary.removed = store.remove_ids(todo.remove)
    if todo.embed:
        writer = BatchWriter(store, len(todo.embed), on_skip, progress)
        try:
            runner(todo.embed, writer)
        finally:
            writer.close()
        stored, skipped = writer.stored, writer.skipped
        summary.stages.update(writer.stages)
        summary.skipped.extend(skipped)
        updated = sum(1 for f in todo.embed if f.path in todo.changed)
        bad_changed = sum(1 for s in skipped if s.path in todo.changed)
        summary.updated = updated - bad_changed
        summary.added = stored - summary.updated
        # A changed file that no longer decodes keeps no stale vectors.
        stale = [p for p in (s.path for s in skipped) if p in todo.changed]
        states = store.file_states()
        store.remove_ids(states[p].id for p in stale if p in states)
        summary.removed += len(stale)
    finishing = time.perf_counter()
    fill_facts(root, store, progress)
    keep = {s.path for s in summary.skipped} - set(todo.absent)
    if only is not None:  # failures of files not listed are not this run's to forget
        covered = covered_by(only)
        keep.update(p for p in store.skipped_files() if not covered(p))
    store.forget_skipped(keep)
    summary.stages["plan"] = planned - began
    summary.stages["finish"] = time.perf_counter() - finishing
    return summary


def fill_facts(root: Path, store: Store, progress: bool = False, batch: int = 256) -> int:
    """Read the photo facts of images indexed before the index kept them (schema 3), without
    embedding anything again; a file that cannot be read now keeps none. Returns how many."""
    missing = sorted(store.without_facts().items())
    if not missing:
        return 0
    limits = Limits.from_meta(store.meta())
    bar = _progress_bar(len(missing), progress)
    filled = 0
    with ThreadPoolExecutor(default_workers(), thread_name_prefix="facts") as pool:
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            read = pool.map(lambda item: load_facts(root / item[1], limits), chunk)
            found = [(i, f) for (i, _), f in zip(chunk, read) if not isinstance(f, str)]
            store.put_facts(found)
            filled += len(found)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return filled


class Embedding:
    """The model side of an index: its model (loaded on first use: a re-run with nothing
    new never needs it), its caption bank and the settings its captions are combined by."""

    def __init__(
        self,
        model_name: str,
        settings: CaptionSettings,
        store: Store,
        device: str | None = None,
        model: Model | None = None,
        bank: CaptionBank | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ):
        self.limits = limits  # what one query or indexed image may cost to decode
        self.model_name = model_name
        self.settings = settings
        self.store = store
        self.device = device
        self._model = model
        self._query_model: Model | None = None
        self._bank = bank
        self.ran_with: Model | None = None  # the model of the last run, the export included
        self.exports: dict[int, Model | None] = {}  # short runs' ONNX export, by its threads

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def precision(self) -> str | None:
        """The number format the images of the last run were embedded in (the loaded model's,
        or a short run's ONNX export's: float32); None before any ran."""
        model = self._model if self._model is not None else self.ran_with
        return None if model is None else model.precision

    @property
    def model(self) -> Model:
        if self._model is None:
            from imgsearch.models import load_model, pick_device

            self._model = load_model(self.model_name, pick_device(self.device))
        return self._model

    @property
    def query_model(self) -> Model:
        """The model a single query runs: the model itself where this process has it, else
        the quickest to start (its ONNX export, with no torch: ``models.load_query_model``)."""
        if self._model is not None:
            return self._model
        if self._query_model is None:
            from imgsearch.models import load_query_model

            self._query_model = load_query_model(self.model_name, self.device)
        return self._query_model

    def encode_text(self, text: str) -> np.ndarray:
        """One query text's unit vector, on one thread."""
        from imgsearch.models import one_thread

        model = self.query_model
        with one_thread():
            return model.encode_texts([text])[0]

    @property
    def preprocess(self) -> Preprocess | None:
        """The decode side of the model's preprocessing, read without loading the model
        where its backend can (None where it cannot: then only the model says)."""
        if self._model is not None:
            return self._model.preprocess
        from imgsearch.models import preprocess_for

        return preprocess_for(self.model_name)

    def on_cpu(self) -> bool:
        """Whether the model runs (or will run) on this CPU, known without importing torch
        where no accelerator was asked for and none is present."""
        if self._model is not None:
            return self._model.device.type == "cpu"
        if self.device not in (None, "auto"):
            return str(self.device).split(":")[0] == "cpu"
        return not accelerator_present()

    @property
    def bank(self) -> CaptionBank:
        if self._bank is None:
            texts, vectors = self.store.load_bank()
            self._bank = CaptionBank(texts, vectors)
        return self._bank

    def describe(self, image: Image.Image, path: Path | None = None) -> Description:
        """A decoded image as the scoring methods see it (the query model runs, on one
        thread)."""
        from imgsearch.models import one_thread

        model = self.query_model
        pixels = model.preprocess(image)[None]
        with one_thread():
            vectors, found = describe_pixels(pixels, model, self.bank, self.settings)
        return Description(
            found.ids[0].tolist(),
            found.scores[0].tolist(),
            found.vectors[0],
            vectors.image[0],
            str(path.resolve()) if path else "<image>",
            path,
            None,
            image,
            None if found.concepts is None else found.concepts[0],
            None if found.confidence is None else float(found.confidence[0]),
        )

    def describe_file(self, path: Path, relative: str | None, name: object = None) -> Description:
        """An image file as the scoring methods see it: read from the index when it is the
        indexed, unchanged file at ``relative`` (no model needed), else decoded and embedded.
        ``name`` is how messages call the file (default: its path)."""
        if relative is not None:
            record = self.store.get(path=relative)
            stat = path.stat()
            if record and (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                return Description(
                    record.caption_ids,
                    record.caption_scores,
                    record.caption_vector,
                    record.image_vector,
                    str(path.resolve()),
                    path,
                    record.id,
                    concept_vector=record.concept_vector,
                    class_confidence=record.class_confidence,
                )
        try:
            image = decode(path, limits=self.limits).image
        except BadImage as exc:
            raise ImgsearchError(f"{path if name is None else name}: {exc}") from None
        return self.describe(image, path)


def accelerator_present() -> bool:
    """An NVIDIA driver is loaded, or this is a Mac (Apple MPS): torch may find a device."""
    return sys.platform == "darwin" or os.path.exists("/proc/driver/nvidia/gpus")


def new_bank(
    model: Model, captions: str | os.PathLike | None, progress: bool = False
) -> tuple[str, CaptionBank]:
    """A caption bank's name and its texts embedded by ``model``: the packaged vectors of
    the default bank where the package has them for the model, else read from the cache or
    embedded (with a progress bar on a terminal, ``progress``) and cached per model and bank."""
    from imgsearch.models.base import cached_text_vectors

    name, texts = read_bank(captions)
    return name, CaptionBank(texts, cached_text_vectors(model, texts, progress=progress))


def _progress_bar(total: int, enabled: bool):  # noqa: ANN202 - tqdm or None
    if not enabled or total == 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="indexing", file=sys.stderr, dynamic_ncols=True)
