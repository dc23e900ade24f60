"""How fast ``imgsearch index`` is on camera photos, next to the limits it works within.

One command, re-runnable::

    python benchmarks/index_speed.py --model clip --images 64
    python benchmarks/index_speed.py --model clip --images 64 --size 640x480
    python benchmarks/index_speed.py --model offline --images 64 --json
    python benchmarks/index_speed.py --model clip-l14 --device cuda --size 640x480 --no-naive

Every throughput comes from one process and one loaded model, so they can be compared:

* ``model_alone``: preprocessed tensors already in memory, batched through ``encode_images``.
* ``decode_alone``: files to model-ready tensors with the indexer's own decode stage
  (reduced-size JPEG decode + preprocess in its workers; on CUDA with torchvision, nvJPEG
  beside them, as the indexer does; ``decode_cpu_alone`` is then the workers alone).
* ``caption_alone``: the caption-bank search and combining over the model's outputs, on the
  model's device as the indexer does it.
* ``write_alone``: storing every batch's records, one transaction each, in a fresh database.
* ``naive``: what a short script would do: full-size Pillow decode, the transformers image
  processor, batch, model, all in one thread (``--no-naive`` leaves it out).
* ``imgsearch``: ``Index.create(...).add()`` into a fresh database.

The four ``*_alone`` figures are the stages' ceilings; the stage table beside them says where
the best ``imgsearch`` run spent its time (read, decode, model, caption search, write, and
the model waiting), so the slowest stage is plain to see. Every images/s figure runs from
the first file read to the last result stored; model loading and the one-time caption-bank
embedding are left out and reported as ``load_s``.

On a CPU every stage takes turns on the same cores, so no pipeline beats the "shared CPU
ceiling" 1 / (sum of 1/ceiling); ``imgsearch/shared_cpu_ceiling`` says how close it gets.
Each path is timed ``--repeat`` times (default 3) in interleaved rounds and the best kept.
On a shared machine add ``--wait-quiet 120``; the ``others`` column is the share of the
cores other processes used during each timing.

The photos (12 MP JPEG by default, or ``--size WxH``; quality 90, all different) are made
from scikit-image's sample photos and cached in ``--workdir`` with the random CLIP, so later
runs start in seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch and imgsearch load after the photo pool has forked
    from imgsearch.models import Model

REPO = Path(__file__).resolve().parent.parent
PHOTO_SIZE = (4000, 3000)
JPEG_QUALITY = 90
PHOTO_RECIPE = 1  # bump when the recipe changes: cached photos are then made again
SEED = 0
# Colour photos first; grey ones get a tint so every file is a colour JPEG like a camera's.
SOURCES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "grass",
    "gravel",
    "brick",
)
WARMUP_IMAGES = 4


def say(message: str) -> None:
    print(f"[index_speed] {message}", file=sys.stderr, flush=True)


# --- photos ------------------------------------------------------------------------------


@cache
def _source(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    if array.dtype != np.uint8:
        array = (array * 255 if array.max() <= 1 else array).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3])


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 640x480") from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 32x32")
    return width, height


def _make_photo(job: tuple[int, str, tuple[int, int]]) -> int:
    """Write photo ``index``: a random crop of the size's aspect, flipped, recoloured,
    scaled, with grain.

    The grain is what makes the files camera-sized: a smooth upscale compresses to a few
    hundred kB, and JPEG decode time follows the entropy-coded size, not the pixel count.
    """
    index, path, size = job
    rng = np.random.default_rng([SEED, index])
    source = _source(SOURCES[index % len(SOURCES)])
    w, h = source.size
    aspect = size[0] / size[1]
    bw, bh = (h * aspect, h) if w / h > aspect else (w, w / aspect)
    frac = rng.uniform(0.6, 1.0)
    bw, bh = bw * frac, bh * frac
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    image = source
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gains, gamma = rng.uniform(0.8, 1.2, 3), rng.uniform(0.8, 1.25)
    ramp = np.linspace(0.0, 1.0, 256) ** gamma
    lut = np.concatenate([np.clip(ramp * g * 255, 0, 255) for g in gains]).astype(np.uint8)
    image = image.point(lut.tolist()).resize(
        size, Image.Resampling.BICUBIC, box=(x, y, x + bw, y + bh)
    )
    width, height = size
    # Texture at two scales: blotches (surfaces, out-of-focus detail) and sensor grain.
    blotch = rng.standard_normal((height // 4, width // 4), dtype=np.float32)
    blotch *= rng.uniform(3, 6)
    blotch = np.asarray(Image.fromarray(blotch).resize(size, Image.Resampling.BILINEAR))
    luma = blotch + rng.standard_normal((height, width), dtype=np.float32) * rng.uniform(3, 6)
    pixels = rng.standard_normal((height, width, 3), dtype=np.float32)  # chroma noise
    pixels *= 1.5
    pixels += luma[..., None]
    pixels += np.asarray(image, dtype=np.float32)
    np.clip(pixels, 0, 255, out=pixels)  # in place: a copying clip costs more than the noise
    out = Image.fromarray(pixels.astype(np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "imgsearch-bench"  # Make
    exif[0x0110] = "12MP"  # Model
    exif[0x0112] = 1  # Orientation: upright, as most camera files are
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    out.save(tmp, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    os.replace(tmp, path)  # an interrupted run leaves no half-written photo behind
    return index


def recipe_folder(folder: Path, recipe: dict[str, Any]) -> None:
    """Make ``folder`` a cache of photos made by ``recipe``: emptied first unless its
    manifest records the same recipe, so a changed recipe never mixes with old photos."""
    manifest = folder / ".recipe.json"
    wanted = json.loads(json.dumps(recipe))  # tuples as JSON reads them back: lists
    if folder.is_dir():
        try:
            same = json.loads(manifest.read_text()) == wanted
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(wanted))


def make_photos(folder: Path, count: int, size: tuple[int, int] = PHOTO_SIZE) -> list[Path]:
    """The ``count`` photos of ``size`` in ``folder``, made (in parallel) only where missing."""
    recipe = {"recipe": PHOTO_RECIPE, "seed": SEED, "size": size, "quality": JPEG_QUALITY}
    recipe_folder(folder, recipe)
    paths = [folder / f"photo-{i:05d}.jpg" for i in range(count)]
    for extra in set(folder.glob("*.jpg")) - set(paths):  # left from a larger --images
        extra.unlink()
    todo = [(i, str(p), size) for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        start = time.perf_counter()
        say(f"making {len(todo)} photos in {folder} (once; cached for later runs)")
        # About 0.5 GB each while a photo is made: enough processes, not every core of a big box.
        with multiprocessing.Pool(min(os.cpu_count() or 1, 16)) as pool:
            for _ in pool.imap_unordered(_make_photo, todo):
                pass
        say(f"made {len(todo)} photos in {time.perf_counter() - start:.1f} s")
    return paths


# --- the random CLIP ---------------------------------------------------------------------


# OpenAI's ViT-L/14 sizes (vision 24 layers of 1024, text 12 of 768, 768-d projection).
VIT_L14 = {
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "image_size": 224,
    },
    "text_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
    },
    "projection_dim": 768,
}


def save_random_clip(folder: Path, large: bool = False) -> Path:
    """CLIP ViT-B/32 (``CLIPConfig()`` defaults), or ViT-L/14 with ``large``, with seeded
    random weights, as a model folder.

    No CLIP weights can be downloaded here; speed does not depend on the weights' values,
    only on the architecture, so a random ViT-B/32 times the same as OpenAI's.
    """
    done = folder / ".complete"
    if done.is_file():
        return folder
    from transformers.utils import logging

    from imgsearch.models.clip import save_random_clip as save

    logging.disable_progress_bar()
    say(f"saving a random CLIP {'ViT-L/14' if large else 'ViT-B/32'} to {folder} (once)")
    shutil.rmtree(folder, ignore_errors=True)
    save(folder, seed=SEED, **(VIT_L14 if large else {}))  # else every size is CLIPConfig()'s
    done.touch()
    return folder


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Timing:
    images: int
    seconds: float
    others: float = 0.0  # share of all cores other processes used meanwhile
    stages: dict[str, float] | None = None  # imgsearch: IndexSummary.stages of that run

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _cpu_jiffies() -> tuple[float, float]:
    """(busy, total) seconds of all cores since boot, from /proc/stat; zeros elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - fields[3] - fields[4]) / hz, total / hz


def proc_stat(stat: Path) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) from a /proc/PID/stat or /proc/PID/task/TID/stat file; None
    where it cannot be read (the process or thread has gone)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        # fields[1] is the parent's pid; [11], [12]: user, system ticks
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _own_cpu() -> float:
    """CPU seconds of this process and its children, live ones included (decode workers)."""
    own = sum(os.times()[:4])
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        read = proc_stat(stat)
        if read is not None and read[0] == me:
            own += read[1]
    return own


def timed(images: int, run: Callable[[], object]) -> Timing:
    """Time ``run``, and measure how much of the machine others used while it ran.

    Busy time of all cores minus the CPU time of this process and its children (the decode
    workers): on a shared machine this tells a slow figure from a slow pipeline.
    """
    busy0, total0 = _cpu_jiffies()
    own0 = _own_cpu()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    busy1, total1 = _cpu_jiffies()
    own = _own_cpu() - own0
    others = max(0.0, (busy1 - busy0) - own) / max(total1 - total0, 1e-9)
    return Timing(images, seconds, min(others, 1.0))


def best(timings: list[Timing]) -> Timing:
    """The fastest attempt: on a shared machine the slower ones measure the neighbours."""
    return min(timings, key=lambda t: t.seconds)


def indexer_workers(workers: int | None, gpu: bool) -> int:
    """The decode worker count the indexer picks when given none (fewer beside nvJPEG).

    decode_alone and imgsearch are both given this count explicitly, so they can differ
    only in the pipeline around the decoding, never in its width.
    """
    if workers:
        return workers
    from imgsearch import indexer

    return int(indexer.default_workers(beside_gpu=gpu))


def gpu_decoding(device: str) -> bool:
    """Whether the indexer decodes on the GPU here: CUDA, and torchvision's nvJPEG."""
    import torch

    from imgsearch.gpudecode import nvjpeg_decoder

    return device == "cuda" and nvjpeg_decoder(torch.device(device)) is not None


def decoded(
    root: Path, paths: Sequence[Path], model: Model, workers: int, batch_size: int, gpu: bool
) -> Iterator[tuple[Any, Any]]:
    """(FileInfo, Pixels) made exactly as the indexer makes them: its own decode stage, the
    CPU workers alone or (``gpu``) beside nvJPEG."""
    from imgsearch.files import DEFAULT_LIMITS, FileInfo
    from imgsearch.indexer import _decoded, mixed_decoder  # private on purpose: measured

    infos = [FileInfo(p.relative_to(root).as_posix(), 0, 0) for p in paths]
    if gpu:
        from imgsearch.gpudecode import nvjpeg_decoder

        decode = nvjpeg_decoder(model.device)
        assert decode is not None
        pre = model.preprocess
        yield from mixed_decoder(root, infos, pre, decode, DEFAULT_LIMITS, batch_size, workers)
        return
    for item in _decoded(root, infos, model, workers, batch_size):
        yield item.info, item.pixels


def decode_path(
    root: Path, paths: Sequence[Path], model: Model, workers: int, batch_size: int, gpu: bool
) -> tuple[Callable[[], Timing], list[Any]]:
    """(one timed pass, the decoded (info, pixels) for the other stages), after a warm-up."""
    list(decoded(root, paths[:WARMUP_IMAGES], model, workers, batch_size, gpu))
    done: list[Any] = []

    def run() -> None:
        done[:] = decoded(root, paths, model, workers, batch_size, gpu)
        if gpu:
            import torch

            torch.cuda.synchronize()
        for info, pixels in done:
            if pixels.error or pixels.array is None:
                raise RuntimeError(f"{info.path}: {pixels.error}")

    return lambda: timed(len(paths), run), done


def stacked(done: list[Any], model: Model, batch_size: int) -> list[Any]:
    """The decoded photos in model batches (tensors; on the device where decoded there)."""
    from imgsearch.indexer import Loaded, stack_pixels

    items = [Loaded(info, pixels) for info, pixels in done]
    return [
        stack_pixels(items[i : i + batch_size], model) for i in range(0, len(items), batch_size)
    ]


def model_path(model: Model, batches: list[Any]) -> Callable[[], Timing]:
    """One timed pass over batches stacked beforehand, after a warm-up at the full batch shape."""
    model.encode_images(batches[0])

    def run() -> None:
        for batch in batches:
            model.encode_images(batch)

    return lambda: timed(sum(len(b) for b in batches), run)


def caption_path(
    model: Model, bank: Any, settings: Any, batches: list[Any]
) -> tuple[Callable[[], Timing], list[Any]]:
    """The caption search alone (bank on the model's device, as the indexer does it) over
    the model's own outputs for every batch; and those (outputs, captions) for writing."""
    from imgsearch.indexer import describe_vectors

    outputs = [model.encode_images(batch) for batch in batches]
    threads = 1 if model.device.type == "cpu" else None
    found: list[Any] = []

    def run() -> None:
        found[:] = [
            describe_vectors(v, b, model, bank, settings, threads) for v, b in zip(outputs, batches)
        ]

    run()  # warm-up: the bank's vectors reach the device
    return lambda: timed(sum(len(b) for b in batches), run), list(zip(outputs, found))


def write_path(
    runs: Path, done: list[Any], described: list[Any], batch_size: int
) -> Callable[[], Timing]:
    """Storing every batch's records, one transaction each, into a fresh database: alone,
    under the writer lock as in ``add()`` (without it every batch's connection was the
    database's last and closing it checkpointed the WAL: a slower ceiling than the real
    writer's)."""
    from imgsearch.files import FileInfo
    from imgsearch.indexer import Loaded, records
    from imgsearch.storage import Store

    items = [Loaded(FileInfo(info.path, 1, 1), pixels) for info, pixels in done]
    batches = [
        records(items[i * batch_size : (i + 1) * batch_size], vectors, captioned)
        for i, (vectors, captioned) in enumerate(described)
    ]
    attempts = 0

    def run() -> None:
        nonlocal attempts
        attempts += 1
        store = Store.open(runs / f"write-{attempts}.db", create=True)
        try:
            with store.writer():  # as add() writes: the lock held, one connection kept open
                for batch in batches:
                    store.put_images(batch)
        finally:
            store.close()

    return lambda: timed(len(items), run)


def naive_preprocessor(model_arg: str, model: Model) -> tuple[str, Callable[[Image.Image], Any]]:
    """(description, PIL image -> CHW tensor) as a script without imgsearch would do it."""
    if model_arg == "offline":
        # EfficientNet-Lite0 has no transformers processor: the same resize/crop/normalise,
        # from the full-size image (imgsearch's Preprocess with nothing skipped beforehand).
        return "PIL resize/crop/normalise at full size", lambda image: model.preprocess.normalize(
            model.preprocess(image)
        )[0]
    from transformers import AutoImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = AutoImageProcessor.from_pretrained(model_arg, local_files_only=True)

    def run(image: Image.Image) -> Any:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    return type(processor).__name__, run


def naive_path(
    paths: Sequence[Path],
    model: Model,
    preprocess: Callable[[Image.Image], Any],
    batch_size: int,
) -> Callable[[], Timing]:
    """Full-size decode and preprocessing, one file after another, then the model per batch."""
    import torch

    def run(files: Sequence[Path]) -> None:
        batch = []
        for path in files:
            with Image.open(path) as image:
                batch.append(preprocess(image.convert("RGB")))
            if len(batch) == batch_size:
                model.encode_images(torch.stack(batch))
                batch.clear()
        if batch:
            model.encode_images(torch.stack(batch))

    run(paths[:WARMUP_IMAGES])
    return lambda: timed(len(paths), lambda: run(paths))


def imgsearch_path(
    root: Path,
    warm_root: Path,
    runs: Path,
    model_arg: str,
    device: str,
    batch_size: int,
    workers: int,
) -> tuple[float, Model, Callable[[], Timing], Any]:
    """(load_s, the model, one timed pass, the warm-up index): the API path of
    ``imgsearch index``.

    ``Index.create`` on a new database loads the model and embeds the caption bank: that is
    load_s. The first index (a few photos) also warms the pipeline up; each timed ``add()``
    then runs into a fresh database, reusing the loaded model as one process would.
    """
    from imgsearch.api import Index

    start = time.perf_counter()
    warm = Index.create(warm_root, runs / "warmup.db", model_arg, device=device)
    model = warm.model  # a named model with its bank cached loads here, not in create
    load_s = time.perf_counter() - start
    warm.add(batch_size=batch_size, workers=workers)
    attempts = 0
    expected = len(list(root.glob("*.jpg")))

    def once() -> Timing:
        nonlocal attempts
        attempts += 1
        with Index.create(root, runs / f"index-{attempts}.db", model_arg, device=device) as index:
            summaries = []
            timing = timed(
                expected,
                lambda: summaries.append(index.add(batch_size=batch_size, workers=workers)),
            )
        if summaries[0].added != expected or summaries[0].skipped:
            raise RuntimeError(f"imgsearch did not index every photo: {summaries[0].to_dict()}")
        timing.stages = summaries[0].stages
        return timing

    return load_s, model, once, warm


def with_writer_process(once: Callable[[], Timing]) -> Callable[[], Timing]:
    """The imgsearch path with the writer in a child process wherever the indexer allows one
    (``indexer.WRITER_PROCESS_AUTO`` on meanwhile: beside an accelerator, long runs)."""
    from imgsearch import indexer

    def run() -> Timing:
        before = indexer.WRITER_PROCESS_AUTO
        indexer.WRITER_PROCESS_AUTO = True
        try:
            return once()
        finally:
            indexer.WRITER_PROCESS_AUTO = before

    return run


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine(device: str) -> str:
    import torch

    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    text = f"{name}, {usable_cores()} cores, torch {torch.__version__} with {threads} threads"
    if device == "cuda":
        text += f", {torch.cuda.get_device_name()}"
    return text


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy over ``seconds`` while this process sleeps: the neighbours' load."""
    busy0, total0 = _cpu_jiffies()
    time.sleep(seconds)
    busy1, total1 = _cpu_jiffies()
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def wait_until_quiet(limit: float) -> float:
    """Wait (up to ``limit`` s) for two quiet seconds in a row; returns the last busy share."""
    deadline, quiet, busy = time.monotonic() + limit, 0, cpu_busy()
    while time.monotonic() < deadline and quiet < 2:
        quiet = quiet + 1 if busy < 0.1 else 0
        if quiet < 2:
            busy = cpu_busy()
    return busy


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, kB here


def hardlink_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("clip", "clip-l14", "offline"), default="clip")
    parser.add_argument("--images", type=int, default=64, help="photos to index (default 64)")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=PHOTO_SIZE,
        metavar="WxH",
        help="size of the photos made (default 4000x3000, 12 MP; 640x480 is a dataset's)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers", type=int, default=None, help="decode workers (default: the indexer's own)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="cache folder (default bench-out/photos-N)"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="where the random CLIP is saved (default WORKDIR/clip-vit-b32-random); "
        "point several workdirs at one to save 600 MB each",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="time each path this often, in interleaved rounds, keep the best (default 3)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="on a shared machine: before each timing wait up to S seconds for idle cores",
    )
    parser.add_argument(
        "--no-naive", action="store_true", help="leave out the naive path (slow on 12 MP photos)"
    )
    parser.add_argument(
        "--sample-threads",
        action="store_true",
        help="sample where each thread is during the imgsearch runs (benchmarks/thread_sampler.py)",
    )
    parser.add_argument(
        "--writer-process",
        action="store_true",
        help="also time imgsearch with its writer in a child process (imgsearch_wproc)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = parser.parse_args(argv)
    if args.images < WARMUP_IMAGES or args.batch_size < 1 or args.repeat < 1:
        parser.error(f"--images must be at least {WARMUP_IMAGES}; --batch-size, --repeat 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    folder = f"photos-{args.images}"
    if args.size != PHOTO_SIZE:
        folder += f"-{args.size[0]}x{args.size[1]}"
    workdir = (args.workdir or REPO / "bench-out" / folder).resolve()
    photos_dir = workdir / "photos"
    paths = make_photos(photos_dir, args.images, args.size)  # before torch: forks cleanly

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The caption bank's vectors are cached next to the photos, not in the user's cache.
    cache_dir = Path(os.environ.setdefault("IMGSEARCH_CACHE_DIR", str(workdir / "cache")))
    import torch

    if torch.get_num_threads() < usable_cores():
        torch.set_num_threads(usable_cores())
    if args.device == "cuda" and not torch.cuda.is_available():
        say("--device cuda: no CUDA GPU here")
        return 2

    if args.model in ("clip", "clip-l14"):
        large = args.model == "clip-l14"
        default = workdir / ("clip-vit-l14-random" if large else "clip-vit-b32-random")
        model_dir = (args.model_dir or default).resolve()
        model_arg = str(save_random_clip(model_dir, large))
        model_text = (
            "clip-l14: CLIP ViT-L/14 (OpenAI's sizes), random weights, seed 0"
            if large
            else "clip: CLIP ViT-B/32 (CLIPConfig() defaults), random weights, seed 0"
        )
        weights = "random weights time the same as trained ones (same architecture). "
    else:
        model_arg, model_text = "offline", "offline: EfficientNet-Lite0 + all-MiniLM-L6-v2"
        weights = ""

    # Every path reads the files from the page cache: read them once now, so the first
    # measured path does not pay for the disk and the others do not get it for free.
    sizes = [len(p.read_bytes()) for p in paths]
    runs = workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    warm_root = runs / "warm-photos"
    warm_root.mkdir(parents=True)
    for path in paths[:WARMUP_IMAGES]:
        hardlink_or_copy(path, warm_root / path.name)
    gpu = gpu_decoding(args.device)
    workers = indexer_workers(args.workers, gpu)
    busy = wait_until_quiet(args.wait_quiet) if args.wait_quiet else cpu_busy()
    if busy > 0.1:
        say(f"the cores are {busy:.0%} busy before the run: others share them, figures drop")
    cached_before = set(cache_dir.glob("*.npy")) if cache_dir.is_dir() else set()

    try:
        say("loading (load_s), then warming every path up")
        load_s, model, ours_once, warm = imgsearch_path(
            photos_dir, warm_root, runs, model_arg, args.device, args.batch_size, workers
        )
        bank = "embedded" if set(cache_dir.glob("*.npy")) - cached_before else "read from cache"
        decode_once, done = decode_path(photos_dir, paths, model, workers, args.batch_size, gpu)
        decode_once()  # the photos every other stage runs on
        batches = stacked(done, model, args.batch_size)
        model_once = model_path(model, batches)
        caption_once, described = caption_path(model, warm.bank, warm.settings, batches)
        write_once = write_path(runs, done, described, args.batch_size)
        paths_once = {
            "model_alone": model_once,
            "decode_alone": decode_once,
            "caption_alone": caption_once,
            "write_alone": write_once,
        }
        naive_name = "not run (--no-naive)"
        if not args.no_naive:
            naive_name, naive_pre = naive_preprocessor(model_arg, model)
            paths_once["naive"] = naive_path(paths, model, naive_pre, args.batch_size)
        sampler = None
        if args.sample_threads:
            from thread_sampler import ThreadSampler, sampled

            sampler = ThreadSampler()
            ours_once = sampled(sampler, ours_once)
        paths_once["imgsearch"] = ours_once
        if args.writer_process:
            paths_once["imgsearch_wproc"] = with_writer_process(ours_once)
        if gpu:  # the CPU decoders alone too: what the GPU's share adds
            paths_once["decode_cpu_alone"] = decode_path(
                photos_dir, paths, model, workers, args.batch_size, False
            )[0]
        timings: dict[str, list[Timing]] = {name: [] for name in paths_once}
        for round_ in range(args.repeat):  # rounds interleave the paths: fairer on a busy box
            for name, once in paths_once.items():
                if args.wait_quiet:
                    wait_until_quiet(args.wait_quiet)
                timing = once()
                timings[name].append(timing)
                say(
                    f"round {round_ + 1}/{args.repeat}: {name} {timing.rate:.2f} images/s "
                    f"(others used {timing.others:.0%} of the cores)"
                )
        warm.close()
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    chosen = {name: best(ts) for name, ts in timings.items()}
    rates = {name: t.rate for name, t in chosen.items()}
    ours, naive = chosen["imgsearch"], chosen.get("naive")
    alone, decode = chosen["model_alone"], chosen["decode_alone"]
    ceilings = {
        k: rates[k] for k in ("decode_alone", "model_alone", "caption_alone", "write_alone")
    }
    slowest = min(ceilings, key=ceilings.__getitem__)
    ratios = {
        **({"imgsearch/naive": ours.rate / naive.rate} if naive else {}),
        "imgsearch/model_alone": ours.rate / alone.rate,
        "imgsearch/min(decode_alone,model_alone)": ours.rate / min(decode.rate, alone.rate),
        f"imgsearch/slowest stage alone ({slowest})": ours.rate / ceilings[slowest],
    }
    fixed = sum((ours.stages or {}).get(k, 0.0) for k in FIXED_PHASES)
    if 0 < fixed < ours.seconds:
        # The run less its phases before the first batch and after the last: the pace the
        # stages keep together, which a longer run approaches.
        steady = args.images / (ours.seconds - fixed)
        ratios[f"imgsearch between first and last batch/{slowest}"] = steady / ceilings[slowest]
    if args.device == "cpu":
        # Every stage shares the same cores: at best their costs per image add up.
        shared = sum(1 / r for r in ceilings.values())
        ratios["imgsearch/shared_cpu_ceiling"] = ours.rate * shared
    stages = stage_table(ours.stages or {}, ceilings, workers)
    if "imgsearch_wproc" in chosen:
        ratios["imgsearch_wproc/imgsearch"] = rates["imgsearch_wproc"] / ours.rate
        wproc = stage_table(chosen["imgsearch_wproc"].stages or {}, ceilings, workers)
        stages += "\n\nimgsearch_wproc (the writer in a child process):\n" + wproc
    size_text = f"{args.size[0]}x{args.size[1]}"
    note = (
        f"{weights}"
        f"Photos {size_text} JPEG q{JPEG_QUALITY}, "
        f"mean {np.mean(sizes) / 1e6:.2f} MB, read from the page cache. "
        f"batch {args.batch_size}, {workers} decode workers, device {args.device}"
        + (", nvJPEG decoding beside them" if gpu else "")
        + f", image side in {model.precision}. "
        f"naive preprocessing: {naive_name}. "
        f"load_s = model load + caption bank ({bank}). "
        f"Each path warmed up on {WARMUP_IMAGES} photos first"
        + (f", best of {args.repeat}" if args.repeat > 1 else "")
        + ". 'others' = share of the cores other processes used during that timing. "
        "Stage seconds are those of the best imgsearch run; read and decode are summed over "
        "the decode workers."
    )
    result = {
        "machine": machine(args.device),
        "model": model_text,
        "images": args.images,
        "size": size_text,
        "precision": model.precision,
        "gpu_decode": gpu,
        "load_s": round(load_s, 2),
        "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "stages_s": {k: round(v, 3) for k, v in (ours.stages or {}).items()},
        "others_cpu_share": {k: round(t.others, 3) for k, t in chosen.items()},
        "peak_rss_mb": round(peak_rss_mb()),
        "note": note,
    }
    if sampler is not None:
        result["thread_samples"] = sampler.report()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"machine: {result['machine']}")
    print(f"model:   {result['model']} ({model.precision})")
    loaded = f"load_s: {load_s:.1f} (model load + caption bank, {bank})"
    print(f"images:  {args.images} x {size_text}    {loaded}")
    print()
    print(f"{'path':<18}{'images/s':>10}{'seconds':>10}{'others':>8}")
    for name, rate in rates.items():
        t = chosen[name]
        print(f"{name:<18}{rate:>10.2f}{t.seconds:>10.2f}{t.others:>8.0%}")
    print()
    print(stages)
    print()
    if sampler is not None:
        print(result["thread_samples"])
        print()
    for name, ratio in ratios.items():
        print(f"{name:<48}{ratio:>7.2f}")
    print(f"{'peak RSS (MB)':<48}{result['peak_rss_mb']:>7}")
    print()
    print(f"note: {note}")
    return 0


# The phases of add() that run before the first batch reaches the model or after the last
# leaves it (see IndexSummary.stages): fixed costs, whatever the run's length.
FIXED_PHASES = ("plan", "start", "drain", "finish", "calibrate", "search_index", "query_model")


def stage_table(stages: dict[str, float], ceilings: dict[str, float], workers: int) -> str:
    """Where the best imgsearch run spent its time, stage by stage, beside each stage's
    ceiling measured alone in the same run: the slowest ceiling is what limits."""
    alone = {
        "decode": "decode_alone",
        "model": "model_alone",
        "captions": "caption_alone",
        "write": "write_alone",
    }
    what = {
        "read": f"reading + hashing, summed over {workers} workers",
        "decode": f"decoding + resizing + facts, summed over {workers} workers",
        "gpu_decode": "nvJPEG batches + resizing on the device (one thread)",
        "gpu_read_wait": "that thread waiting for its files to be read (reader processes)",
        "gpu_emit": "that thread handing photos on (waiting while the queue is full)",
        "model": "the model (main thread)",
        "captions": "caption search + combining (its thread)",
        "write": "database writes (the writer thread, or process)",
        "waiting": "the model waiting for photos or for the caption queue",
    }
    lines = [f"{'stage':<14}{'seconds':>9}   {'alone images/s':>15}   what"]
    keys = ("read", "decode", "gpu_decode", "gpu_read_wait", "gpu_emit", "model", "captions")
    for key in (*keys, "write", "waiting"):
        if key not in stages:
            continue
        ceiling = f"{ceilings[alone[key]]:.2f}" if key in alone else ""
        lines.append(f"{key:<14}{stages[key]:>9.2f}   {ceiling:>15}   {what[key]}")
    phases = {
        "plan": "listing the folder against the index",
        "start": "until the first batch reached the model (workers, model load)",
        "drain": "after the last batch: the caption search and writes behind it",
        "finish": "file facts, failed files",
        "calibrate": "the taus from a sample of the collection",
        "search_index": "the default ranking's search index, built for the first query",
        "query_model": "the query model's export, checked (made once per model)",
    }
    if any(key in stages for key in phases):
        lines.append("")
        lines.append(f"{'phase':<14}{'seconds':>9}   one after another, in add()")
        for key, text in phases.items():
            if key in stages:
                lines.append(f"{key:<14}{stages[key]:>9.2f}   {text}")
    shares = {k: v for k, v in stages.items() if k.startswith("files_")}
    if shares:
        lines.append("files: " + ", ".join(f"{k[6:]} {int(v)}" for k, v in shares.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
