"""Indexing spread over a Ray cluster: CPU tasks decode, model workers embed, the driver writes.

The files to embed come from the same ``plan()`` as a single-process run, so what a re-run
does is the same. Ray Data streams them through two stages: decode tasks (one CPU each,
the indexer's own ``load_pixels``: draft-mode JPEG decode, resize, crop to uint8) and model
workers, actors that load the model and the caption bank once and run the indexer's own
``embed_batch`` (one per GPU on a cluster with GPUs). The records come back to this process,
which alone writes them, through the same ``BatchWriter`` as a single-process run.

A worker process that dies is replaced and its batch run again (decode tasks up to
``RETRIES`` times, model workers restarted up to ``RETRIES`` times and their calls retried):
a batch's result reaches the driver only once it is complete, and rows are keyed by path,
so nothing is lost and nothing is stored twice. Batches already written stay written if
the run stops; the next run goes on from there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from imgsearch.errors import ImgsearchError
from imgsearch.files import (
    DEFAULT_LIMITS,
    FileInfo,
    Limits,
    PhotoFacts,
    Pixels,
    Preprocess,
    load_pixels,
)
from imgsearch.indexer import BatchWriter, Loaded, Runner, concept_bridge, embed_batch
from imgsearch.models import preprocess_for

if TYPE_CHECKING:
    from imgsearch.indexer import Embedding

MISSING = "distributed indexing needs Ray: pip install 'imgsearch[ray]'"
AUTO = "auto"  # a cluster this machine already belongs to, else a new local one
RETRIES = 3  # per decode task and per model worker: enough for lost nodes, not for a bad file
DECODE_BATCH = 8  # files per decode call
MAX_BLOCKS = 4096  # decode tasks at most, however many files
KILL_ENV = "IMGSEARCH_RAY_TEST_KILL"
HOLD_ENV = "IMGSEARCH_RAY_TEST_HOLD"
_COLUMNS = ("path", "size", "mtime_ns", "hash", "width", "height", "error", "facts")


def require_ray() -> Any:  # noqa: ANN401 - the ray module
    """The ray module, or the one line that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra brings pyarrow and pandas with it
    except ImportError:
        raise ImgsearchError(MISSING) from None
    return ray


@dataclass
class RayPlan:
    """What this run may use: model workers, and the resources each one asks Ray for."""

    workers: int
    gpus: bool
    device: str  # what the model workers pass to pick_device


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """Ray, connected to ``address`` ('auto', 'HOST:PORT' or 'ray://HOST:PORT').

    'auto' joins the cluster this machine belongs to (``ray start``, or $RAY_ADDRESS) and
    starts a local one, on loopback only, where there is none. A process already connected
    keeps its connection for 'auto'; a connection made here is closed at the end.
    """
    ray = require_ray()
    if ray.is_initialized():
        if address != AUTO:
            raise ImgsearchError(
                "this process is already connected to a Ray cluster; use ray='auto' to index "
                "on it, or connect to another from a new process"
            )
        with contextlib.redirect_stdout(sys.stderr):  # see below
            yield ray
        return
    check_address(address)
    debug = bool(os.environ.get("IMGSEARCH_DEBUG"))
    if not debug:
        # Ray's core logs warnings meant for its developers straight to stderr (a model
        # worker's restart arguments, for one); failures still reach the user as errors.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    options = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": debug}
    try:
        with contextlib.nullcontext() if debug else _quiet_stderr():  # init's own notes
            if address == AUTO and not _cluster_to_join():
                start_local_cluster(ray, **options)
            else:
                ray.init(address=None if address == AUTO else address, **options)
    except ImgsearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        reason = _line(exc)
        if address != AUTO and not os.environ.get("RAY_AUTH_MODE"):
            reason += " (a cluster with token authentication needs RAY_AUTH_MODE=token here)"
        raise ImgsearchError(f"cannot connect to the Ray cluster at {address}: {reason}") from None
    try:
        # Ray prints a worker's death to stdout, which carries only results (--json).
        with contextlib.redirect_stdout(sys.stderr):
            yield ray
    finally:
        ray.shutdown()


def _cluster_to_join() -> bool:
    """Whether ray.init() would join a cluster rather than start one: Ray's own look-up, the
    same one init makes ($RAY_ADDRESS, else the address a ``ray start`` here left)."""
    from ray._private.services import canonicalize_bootstrap_address

    return bool(os.environ.get("RAY_ADDRESS")) or canonicalize_bootstrap_address(None) is not None


def start_local_cluster(ray: Any, **init: Any) -> None:  # noqa: ANN401 - the ray module
    """``ray.init`` for a new cluster on this machine whose processes all listen on loopback.

    Ray gives a new node the machine's network address and its servers listen there or on
    all addresses; ``_node_ip_address='127.0.0.1'`` is turned into that address too. A node on
    127.0.0.1 keeps every server on loopback. Ray's switch for it is
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the default on macOS and Windows), read once when
    ray is imported, hence the constant it sets; checked after the start.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", **init)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
    node = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node).is_loopback:
        ray.shutdown()
        raise ImgsearchError(
            f"Ray {ray.__version__} started its local cluster on {node}, not on 127.0.0.1"
        )


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ core writes to file descriptor 2 directly, past sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds: ray.init waits minutes for a head node that is not there."""
    if address == AUTO:
        return
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ImgsearchError(
            f"--ray {address!r}: give HOST:PORT, ray://HOST:PORT or auto (a local cluster)"
        )
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ImgsearchError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def plan_cluster(ray: Any, workers: int | None, device: str | None) -> RayPlan:  # noqa: ANN401
    """One model worker per GPU where the cluster has GPUs, else one on a CPU; and enough
    CPUs left over for decoding (a CPU model worker holds one CPU)."""
    if workers is not None and workers < 1:
        raise ImgsearchError("--ray-workers must be at least 1")
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
    use_gpus = gpus > 0 and device not in ("cpu", "mps")
    if device == "cuda" and not gpus:
        raise ImgsearchError("--device cuda was asked for, but the Ray cluster has no GPU")
    if use_gpus:
        return RayPlan(workers or gpus, True, "cuda")
    workers = workers or 1
    if workers >= cpus:
        raise ImgsearchError(
            f"the Ray cluster has {cpus:g} CPUs and no GPU: {workers} model worker(s) on "
            f"CPUs would leave none for decoding; use --ray-workers {max(1, int(cpus) - 1)} "
            "or a larger cluster"
        )
    return RayPlan(workers, False, device if device in ("cpu", "mps") else "cpu")


def _die_if_armed(stage: str) -> None:
    """Test hook: end this worker process at once where the folder $IMGSEARCH_RAY_TEST_KILL
    holds a file named ``stage``. Deleting the file first means exactly one process dies."""
    folder = os.environ.get(KILL_ENV)
    if not folder:
        return
    try:
        os.unlink(os.path.join(folder, stage))
    except OSError:
        return
    os._exit(1)


def _hold_if_asked() -> None:
    """Test hook: where $IMGSEARCH_RAY_TEST_HOLD names a file, announce this model worker (the
    file FILE.PID) and wait while FILE exists, so that a test sees the run's processes at work."""
    hold = os.environ.get(HOLD_ENV)
    if not hold:
        return
    Path(f"{hold}.{os.getpid()}").touch()
    while os.path.exists(hold):
        time.sleep(0.1)


def decode_batch(
    batch: dict[str, np.ndarray],
    root: str,
    preprocess: Preprocess,
    limits: Limits = DEFAULT_LIMITS,
) -> dict:
    """Ray decode task: file paths in, uint8 crops and file facts out (bad files flagged)."""
    loaded = [load_pixels(Path(root) / str(path), preprocess, limits) for path in batch["path"]]
    blank = np.zeros((preprocess.crop, preprocess.crop, 3), np.uint8)
    _die_if_armed("decode")
    return {
        "path": batch["path"],
        "size": batch["size"],
        "mtime_ns": batch["mtime_ns"],
        "hash": np.array([p.hash for p in loaded], dtype=object),
        "width": np.array([p.width for p in loaded], np.int64),
        "height": np.array([p.height for p in loaded], np.int64),
        "error": np.array([p.error for p in loaded], dtype=object),
        "facts": np.array([p.facts.to_json() if p.facts else "" for p in loaded], dtype=object),
        "pixels": np.stack([blank if p.array is None else p.array for p in loaded]),
    }


class ModelWorker:
    """Ray actor: loads the model and the caption bank once, then embeds batch after batch
    with the indexer's own ``embed_batch``."""

    def __init__(self, model: str, device: str, bank: list[Any], settings: str):
        import ray

        from imgsearch.captions import CaptionBank, CaptionSettings
        from imgsearch.models import load_model, pick_device

        self.model = load_model(model, pick_device(device))
        texts, vectors = ray.get(bank[0])  # one copy in the object store for every worker
        self.bank = CaptionBank(texts, vectors)
        self.settings = CaptionSettings.from_json(settings)
        self.top = min(self.settings.top_n, len(texts))
        # Every batch has the same columns: the concept ones only where bags are made.
        bridge = concept_bridge(self.model, self.bank) if self.settings.concepts else None
        self.concepts = bridge.size if bridge is not None else 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _hold_if_asked()
        good = [i for i, error in enumerate(batch["error"]) if not error]
        items = [
            Loaded(
                FileInfo(str(batch["path"][i]), int(batch["size"][i]), int(batch["mtime_ns"][i])),
                Pixels(
                    batch["pixels"][i],
                    int(batch["width"][i]),
                    int(batch["height"][i]),
                    str(batch["hash"][i]),
                    facts=PhotoFacts.from_json(batch["facts"][i]) if batch["facts"][i] else None,
                ),
            )
            for i in good
        ]
        records = embed_batch(items, self.model, self.bank, self.settings) if items else []
        n = len(batch["path"])
        out = {name: batch[name] for name in _COLUMNS}
        out["image_vector"] = np.zeros((n, self.model.image_dim), np.float32)
        out["caption_vector"] = np.zeros((n, self.model.text_dim), np.float32)
        out["caption_ids"] = np.full((n, self.top), -1, np.int64)
        out["caption_scores"] = np.zeros((n, self.top), np.float32)
        if self.concepts:
            out["concept_vector"] = np.zeros((n, self.concepts), np.float32)
            out["class_confidence"] = np.zeros(n, np.float32)
        for i, record in zip(good, records):
            if self.concepts and record.concept_vector is not None:
                out["concept_vector"][i] = record.concept_vector
                out["class_confidence"][i] = record.class_confidence
            out["image_vector"][i] = record.image_vector
            out["caption_vector"][i] = record.caption_vector
            out["caption_ids"][i] = record.caption_ids
            out["caption_scores"][i] = record.caption_scores
        _die_if_armed("embed")
        return out


def ray_runner(
    address: str,
    root: Path,
    embedding: Embedding,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Runner:
    """Embed on a Ray cluster: the same records as ``indexer.local_runner``, written here
    by the run's one writer. The model loads on the driver only when its preprocessing
    cannot be read from its config here."""

    def run(files: list[FileInfo], writer: BatchWriter) -> None:
        with connected(address) as ray, _quiet_data(ray):
            plan = plan_cluster(ray, workers, device)
            preprocess = (
                embedding.model.preprocess
                if embedding.loaded
                else preprocess_for(embedding.model_name) or embedding.model.preprocess
            )
            work = (files, root, preprocess, limits)
            data = _pipeline(ray, plan, work, embedding, batch_size)
            try:
                _store_results(data, writer, batch_size)
            except (ImgsearchError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - what was stored stays; the user gets one line
                raise ImgsearchError(f"the Ray run failed: {_line(exc)}") from None

    return run


def _pipeline(
    ray: Any,  # noqa: ANN401 - the ray module
    plan: RayPlan,
    work: tuple[list[FileInfo], Path, Preprocess, Limits],
    embedding: Embedding,
    batch_size: int,
) -> Any:  # noqa: ANN401 - a Ray dataset
    """Files (under a root, decoded with a preprocessing within limits) -> decode tasks ->
    model workers, as a lazily run Ray dataset."""
    files, root, preprocess, limits = work
    bank = embedding.bank
    rows = [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in files]
    # One decode task per block: small ones start the model workers early; at most
    # MAX_BLOCKS, so 10^7 files do not make 10^6 tasks.
    blocks = min(math.ceil(len(rows) / DECODE_BATCH), MAX_BLOCKS)
    data = ray.data.from_items(rows, override_num_blocks=max(1, blocks))
    # Ray Data retries without limit by default; a file that crashes its decoder every
    # time would then never let the run end. Ray 2.60 takes these limits only as
    # ray_remote_args (deprecated, with no named parameter yet): hence the filter.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        data = data.map_batches(
            decode_batch,
            fn_kwargs={"root": str(root), "preprocess": preprocess, "limits": limits},
            batch_size=DECODE_BATCH,
            batch_format="numpy",
            num_cpus=1,
            max_retries=RETRIES,
        )
        return data.map_batches(
            ModelWorker,
            fn_constructor_kwargs={
                "model": embedding.model_name,
                "device": plan.device,
                "bank": [ray.put((bank.texts, bank.vectors))],
                "settings": embedding.settings.to_json(),
            },
            batch_size=batch_size,
            batch_format="numpy",
            # No more model workers than batches: each one loads the model.
            compute=ray.data.ActorPoolStrategy(
                size=min(plan.workers, math.ceil(len(files) / batch_size))
            ),
            num_cpus=1,
            num_gpus=1 if plan.gpus else 0,
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
        )


@contextlib.contextmanager
def _quiet_data(ray: Any) -> Iterator[None]:  # noqa: ANN401 - the ray module
    """Ray Data's own progress output off for the run (ours is the one the user sees), and
    back as it was after it."""
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    start = getattr(context, "print_on_execution_start", True)  # not in older Ray
    saved = context.enable_progress_bars, start, logger.level
    context.enable_progress_bars = context.print_on_execution_start = False
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start, level = saved
        logger.setLevel(level)


def _store_results(data: Any, writer: BatchWriter, batch_size: int) -> None:  # noqa: ANN401
    """Write each finished batch as it arrives, each path once."""
    from imgsearch.storage import ImageRecord

    seen: set[str] = set()
    for batch in data.iter_batches(batch_size=batch_size, batch_format="numpy"):
        bags = "concept_vector" in batch  # see ModelWorker
        records = []
        for i, path in enumerate(str(p) for p in batch["path"]):
            if path in seen:  # a retried batch is never delivered twice; this makes sure
                continue
            seen.add(path)
            info = FileInfo(path, int(batch["size"][i]), int(batch["mtime_ns"][i]))
            if batch["error"][i]:
                writer.skip(info, str(batch["error"][i]))
                continue
            records.append(
                ImageRecord(
                    path=path,
                    size=info.size,
                    mtime_ns=info.mtime_ns,
                    hash=str(batch["hash"][i]),
                    width=int(batch["width"][i]),
                    height=int(batch["height"][i]),
                    image_vector=batch["image_vector"][i],
                    caption_vector=batch["caption_vector"][i],
                    caption_ids=batch["caption_ids"][i].tolist(),
                    caption_scores=batch["caption_scores"][i].tolist(),
                    concept_vector=batch["concept_vector"][i] if bags else None,
                    class_confidence=float(batch["class_confidence"][i]) if bags else None,
                    facts=PhotoFacts.from_json(facts) if (facts := batch["facts"][i]) else None,
                )
            )
        if records:
            writer.put(records)


def _line(exc: BaseException) -> str:
    """The last non-empty line of an error: Ray wraps the cause in a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
