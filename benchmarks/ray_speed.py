"""How fast ``imgsearch index --ray`` is on a local Ray cluster, next to the single-process indexer.

One command, re-runnable::

    python benchmarks/ray_speed.py --model clip --images 128 --workers 1,2
    python benchmarks/ray_speed.py --model offline --images 128 --json

Same photos, same model, same process: the single-process indexer (``Index.add()``), then
the Ray indexer (``Index.add(ray='auto', ray_workers=W)``) on a local cluster for each W in
``--workers``, listening on 127.0.0.1 only as imgsearch's own. A model worker on a CPU holds
one CPU and runs the model on one thread, and the decode tasks need at least one more, so
the cluster for W workers has W + 1 logical CPUs (on a 2-core machine, 2 workers share the
cores with the decoding, as the single process's threads do).

Figures, each the best of ``--repeat`` runs into a fresh database:

* ``images/s``: photos / seconds of the whole ``add()``. For Ray that includes starting the
  model workers and loading the model in them, which every run does again.
* ``startup_s``: a Ray run on the 4 warm-up photos: what every run costs before it gets
  going (Ray Data plans the run, the model workers start and load the model).
* ``after_start/s``: (N - 4) / (seconds - startup_s), Ray runs only: the rate once the
  workers are up, which a long run approaches. Optimistic for small N: decoding that runs
  while the model workers start is hidden in startup_s.
* ``per_worker``: after_start/s divided by the model workers.

(The time between the first and the last batch stored is no measure for Ray: results reach
the driver in bursts.)
* ``others``: the share of the cores used by processes outside this one's process tree (Ray's
  workers are in it) during the timing: on a shared machine, how much the neighbours took.

``load_s`` is the driver's model load and caption bank (read from cache), as in
``index_speed.py``; the single-process figures exclude it, as there.

The photos and the random CLIP ViT-B/32 (random weights time the same as trained ones)
come from ``index_speed.py`` and are cached in the same folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_speed import (  # noqa: E402 - the sibling benchmark, imported for its photos
    REPO,
    WARMUP_IMAGES,
    Timing,
    _cpu_jiffies,
    best,
    hardlink_or_copy,
    machine,
    make_photos,
    save_random_clip,
    usable_cores,
    wait_until_quiet,
)


def say(message: str) -> None:
    print(f"[ray_speed] {message}", file=sys.stderr, flush=True)


def _tree_cpu() -> float:
    """CPU seconds of this process and all its descendants (the local Ray cluster's
    processes and workers), reaped children included."""
    hz = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    mine = {os.getpid()}
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in mine} - mine
        grew = bool(found)
        mine |= found
    return sum(ticks.get(pid, 0) for pid in mine) / hz


def timed(images: int, run: Callable[[], object]) -> Timing:
    busy0, total0 = _cpu_jiffies()
    own0 = _tree_cpu()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    busy1, total1 = _cpu_jiffies()
    others = max(0.0, (busy1 - busy0) - (_tree_cpu() - own0)) / max(total1 - total0, 1e-9)
    return Timing(images, seconds, min(others, 1.0))


class Runner:
    """Timed ``add()`` runs into fresh databases, checked to have indexed every photo."""

    def __init__(self, runs: Path, model_arg: str, device: str, batch_size: int, wait_quiet: float):
        self.runs, self.model_arg, self.batch_size = runs, model_arg, batch_size
        self.device, self.wait_quiet = device, wait_quiet
        self.count = 0

    def __call__(self, root: Path, **add: object) -> Timing:
        from imgsearch.api import Index

        self.count += 1
        expected = len(list(root.glob("*.jpg")))
        db = self.runs / f"run-{self.count}.db"
        with Index.create(root, db, self.model_arg, device=self.device) as index:
            index.model  # noqa: B018 - loaded before the timing, as one process would have it
            if self.wait_quiet:
                wait_until_quiet(self.wait_quiet)
            summaries = []
            timing = timed(
                expected,
                lambda: summaries.append(index.add(batch_size=self.batch_size, **add)),
            )
        summary = summaries[0]
        if summary.added != expected or summary.skipped:
            raise RuntimeError(f"not every photo was indexed: {summary.to_dict()}")
        return timing


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("clip", "offline"), default="clip")
    parser.add_argument("--images", type=int, default=128, help="photos to index (default 128)")
    parser.add_argument(
        "--workers", default="1,2", help="model workers per Ray run, comma-separated (1,2)"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: one model worker per GPU, the cluster has every core for decoding",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure; best kept (2)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="cache folder (default bench-out/photos-N)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="on a shared machine: before each timing wait up to S seconds for idle cores",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = parser.parse_args(argv)
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error("--workers: comma-separated whole numbers, e.g. 1,2")
    if args.images <= WARMUP_IMAGES or min(args.workers) < 1 or args.repeat < 1:
        parser.error(f"--images must be above {WARMUP_IMAGES}; --workers, --repeat at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = (args.workdir or REPO / "bench-out" / f"photos-{args.images}").resolve()
    photos_dir = workdir / "photos"
    paths = make_photos(photos_dir, args.images)  # before torch and Ray: the pool forks

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Set before Ray starts, so its workers read the same caption-bank cache.
    os.environ.setdefault("IMGSEARCH_CACHE_DIR", str(workdir / "cache"))
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # as imgsearch's own ray.init
    import ray
    import torch

    if args.model == "clip":
        model_arg = str(save_random_clip(workdir / "clip-vit-b32-random"))
        model_text = "clip: CLIP ViT-B/32 (CLIPConfig() defaults), random weights, seed 0"
    else:
        model_arg, model_text = "offline", "offline: EfficientNet-Lite0 + all-MiniLM-L6-v2"

    sizes = [len(p.read_bytes()) for p in paths]  # every run reads from the page cache
    runs = workdir / "ray-runs"
    shutil.rmtree(runs, ignore_errors=True)
    warm_root = runs / "warm-photos"
    warm_root.mkdir(parents=True)
    for path in paths[:WARMUP_IMAGES]:
        hardlink_or_copy(path, warm_root / path.name)
    run = Runner(runs, model_arg, args.device, args.batch_size, args.wait_quiet)
    load_before = os.getloadavg()
    rows: list[dict] = []
    try:
        from imgsearch.api import Index
        from imgsearch.distributed import start_local_cluster

        start = time.perf_counter()
        with Index.create(warm_root, runs / "load.db", model_arg, device=args.device) as first:
            first.model  # noqa: B018
        load_s = time.perf_counter() - start
        # One decode worker per usable core, as the indexer picks when all cores are its own
        # (under taskset, os.cpu_count() would count cores it may not use).
        decode = {"workers": usable_cores()}
        run(warm_root, **decode)  # warms the single-process pipeline up
        single = best([run(photos_dir, **decode) for _ in range(args.repeat)])
        say(f"single process: {single.rate:.2f} images/s")
        rows.append(
            {
                "path": "single-process",
                "workers": None,
                "cluster_cpus": None,
                "images_per_s": single.rate,
                "after_start_per_s": None,
                "per_worker": None,
                "startup_s": None,
                "seconds": single.seconds,
                "others": single.others,
            }
        )
        for workers in args.workers:
            # CPU: each model worker holds a CPU and the decoding needs one more; GPU: one
            # worker per GPU, all cores for decoding.
            cpus = usable_cores() if args.device == "cuda" else workers + 1
            start_local_cluster(
                ray,
                num_cpus=cpus,
                num_gpus=workers if args.device == "cuda" else 0,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
            try:
                add = {"ray": "auto", "ray_workers": workers}
                run(warm_root, **add)  # the first run on a new cluster starts its worker pool
                startup = best([run(warm_root, **add) for _ in range(args.repeat)])
                full = best([run(photos_dir, **add) for _ in range(args.repeat)])
            finally:
                ray.shutdown()
            after = (args.images - WARMUP_IMAGES) / (full.seconds - startup.seconds)
            say(f"ray, {workers} worker(s): {full.rate:.2f} images/s, after start {after:.2f}")
            rows.append(
                {
                    "path": "ray",
                    "workers": workers,
                    "cluster_cpus": cpus,
                    "images_per_s": full.rate,
                    "after_start_per_s": after,
                    "per_worker": after / workers,
                    "startup_s": startup.seconds,
                    "seconds": full.seconds,
                    "others": full.others,
                }
            )
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    load_after = os.getloadavg()

    overhead = {
        f"ray x{r['workers']}": {
            "images_per_s": 1 - r["images_per_s"] / single.rate,
            "after_start_per_s": 1 - r["after_start_per_s"] / single.rate,
        }
        for r in rows[1:]
    }
    if args.device == "cuda":
        layout = (
            "ray: a local cluster of every core and W GPUs; one model worker per GPU "
            "(1 CPU + 1 GPU), decode tasks 1 CPU each"
        )
    else:
        layout = (
            "ray: a local cluster of W + 1 logical CPUs; each model worker holds 1 CPU "
            "(torch on 1 thread), decode tasks 1 CPU each"
        )
    note = (
        f"Photos 4000x3000 JPEG q90, mean {np.mean(sizes) / 1e6:.1f} MB, from the page cache. "
        f"batch {args.batch_size}, device {args.device}, best of {args.repeat}. "
        f"single-process: {usable_cores()} decode workers (the indexer's own) and torch with "
        f"{torch.get_num_threads()} threads. {layout}. load_s = driver's model load + "
        "caption bank, excluded from every figure; Ray runs start their model workers and "
        "load the model in them each time (startup_s). overhead = 1 - ray / single-process."
    )
    result = {
        "machine": machine(args.device),
        "model": model_text,
        "images": args.images,
        "load_s": round(load_s, 2),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "rows": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ],
        "overhead": {k: {m: round(v, 3) for m, v in o.items()} for k, o in overhead.items()},
        "note": note,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"machine: {result['machine']}, ray {ray.__version__}")
    print(f"model:   {result['model']}")
    print(f"images:  {args.images}    load_s: {load_s:.1f} (driver: model load + caption bank)")
    print(
        f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}, "
        f"after: {' '.join(f'{v:.2f}' for v in load_after)}"
    )
    print()
    header = (
        "path",
        "workers",
        "cpus",
        "images/s",
        "after_start/s",
        "per_worker",
        "startup_s",
        "seconds",
        "others",
    )
    print(f"{header[0]:<16}" + "".join(f"{h:>14}" for h in header[1:]))

    def cell(value: object, fmt: str = ".2f") -> str:
        return f"{'-' if value is None else format(value, fmt):>14}"

    for r in rows:
        print(
            f"{r['path']:<16}{cell(r['workers'], 'd')}{cell(r['cluster_cpus'], 'd')}"
            f"{cell(r['images_per_s'])}{cell(r['after_start_per_s'])}{cell(r['per_worker'])}"
            f"{cell(r['startup_s'])}{cell(r['seconds'])}{cell(r['others'], '.0%')}"
        )
    print()
    for name, o in overhead.items():
        print(
            f"overhead {name} vs single-process: {o['images_per_s']:.0%} (whole run), "
            f"{o['after_start_per_s']:.0%} (after start)"
        )
    print()
    print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
