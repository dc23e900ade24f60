"""One ``add()`` of the same photos under several variants of the pipeline, in one process,
each into a fresh database: which change helps beside a GPU, measured side by side.

For each variant it prints images/s, the parts of ``add()`` (the pipeline, the calibration
after it), the stage seconds, the CPU seconds each thread of this process used (Python's
threads by name, the others by their OS name: OpenMP and BLAS workers show as 'python'),
how busy the whole machine was, and a probe of the interpreter lock: how late a thread
sleeping 1 ms at a time wakes up, which is mostly waiting for the lock. Variants (in the
order given; the first run of a process also starts its decode pools, so start with a
``default`` to throw away):

- ``default``: as ``imgsearch index`` runs;
- ``executemany``: caption rows through executemany (``storage.JSON_CAPTION_ROWS`` off);
- ``writer-process``: the writer in a child process;
- ``reader-bytes``: reader processes send each file's bytes back with its header
  (``gpudecode.READERS_SEND_BYTES``), as before the GPU's thread read them again;
- ``pipe-pixels``: the CPU decoders' photos back through their result pipe, not shared
  memory (``slabs.ENABLED`` off);
- ``w<N>``: N decode workers; ``cpu-decode``: no nvJPEG;
- ``switch<MS>``: ``sys.setswitchinterval`` at MS milliseconds meanwhile;
- ``sampled``: with ``thread_sampler`` running, its report printed after.

    python benchmarks/add_variants.py --device cuda --variants default,default,executemany
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index_speed import (  # noqa: E402 - after the path
    REPO,
    _cpu_jiffies,
    hardlink_or_copy,
    make_photos,
    parse_size,
    proc_stat,
    save_random_clip,
)


def task_cpu() -> dict[int, float]:
    """CPU seconds of each thread of this process, by its native id (Linux)."""
    out = {}
    for stat in Path("/proc/self/task").glob("*/stat"):
        read = proc_stat(stat)
        if read is not None:
            out[int(stat.parent.name)] = read[1]
    return out


class Probe:
    """While a run goes: a thread sleeping 1 ms at a time, noting how late it wakes, and
    every quarter second the CPU time of each thread (threads that end are kept)."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()

    def _names(self) -> None:
        for thread in threading.enumerate():
            if thread.native_id is not None:
                self.names[thread.native_id] = thread.name

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            start = time.perf_counter()
            time.sleep(0.001)
            self.late.append(time.perf_counter() - start - 0.001)
            if time.perf_counter() - last > 0.25:
                last = time.perf_counter()
                self._names()
                self.cpu.update(task_cpu())

    def __enter__(self) -> Probe:
        self.before = task_cpu()
        self._names()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu.update(task_cpu())

    def threads(self) -> dict[str, float]:
        """CPU seconds per thread group (names without their numbers), most first."""
        groups: dict[str, float] = defaultdict(float)
        for tid, seconds in self.cpu.items():
            used = seconds - self.before.get(tid, 0.0)
            if used < 0.005:
                continue
            name = self.names.get(tid)
            if name is None:
                try:
                    name = "native:" + Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                except OSError:
                    name = "native:ended"
            groups[re.sub(r"[-_]?\d+$", "", name)] += used
        return {k: round(v, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}

    def lock(self) -> dict[str, float]:
        """How late the 1 ms sleeps woke, in ms."""
        import numpy as np

        late = np.array(self.late) * 1000
        if not len(late):
            return {}
        return {
            "mean_ms": round(float(late.mean()), 3),
            "p99_ms": round(float(np.percentile(late, 99)), 3),
            "max_ms": round(float(late.max()), 2),
        }


class Clocks:
    """Seconds spent in a few functions of the package (patched while the script runs)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        inner = getattr(owner, attr)

        @functools.wraps(inner)
        def clocked(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, attr, clocked)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    parser.add_argument("--model", choices=("clip", "clip-l14"), default="clip")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="WxH (640x480)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--variants", default="default,default,executemany,default,executemany")
    parser.add_argument("--workdir", type=Path, default=None, help="default bench-out/variants")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = (args.workdir or REPO / "bench-out" / "variants").resolve()
    size_text = f"{args.size[0]}x{args.size[1]}"
    photos = work / f"photos-{args.images}-{size_text}"
    paths = make_photos(photos, args.images, args.size)  # before torch: forks cleanly
    large = args.model == "clip-l14"
    model_dir = save_random_clip(
        work / ("clip-vit-l14-random" if large else "clip-vit-b32-random"), large
    )
    os.environ.setdefault("IMGSEARCH_CACHE_DIR", str(work / "cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for path in paths:  # from the page cache for every variant alike
        path.read_bytes()
    import torch

    from imgsearch import api, gpudecode, indexer, slabs, storage
    from imgsearch.api import Index

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU here", file=sys.stderr)
        return 2
    clocks = Clocks()
    clocks.wrap(indexer, "update", "pipeline")
    clocks.wrap(api.Index, "_calibrate", "calibrate")
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    warm_root = work / "warm-photos"
    warm_root.mkdir(exist_ok=True)
    for path in paths[:64]:
        if not (warm_root / path.name).exists():
            hardlink_or_copy(path, warm_root / path.name)
    warm_db = runs / f"warm-{model_dir.name}.db"
    warm_db.unlink(missing_ok=True)
    with Index.create(warm_root, warm_db, str(model_dir), device=args.device) as warm:
        warm.add(batch_size=args.batch_size)  # saves the model's export
        warm.model  # noqa: B018 - loaded here (a short CPU run used the export): no variant pays it
    local_runner = indexer.local_runner
    counter = iter(range(1, 10**6))

    def once(name: str, setup: Callable[[], Callable[[], None]], **runner: Any) -> None:
        undo = setup()
        indexer.local_runner = functools.partial(local_runner, **runner)
        sampler = None
        if name == "sampled":
            from thread_sampler import ThreadSampler

            sampler = ThreadSampler()
        db = runs / f"variant-{next(counter)}.db"
        clocks.spent.clear()
        try:
            with Index.create(photos, db, str(model_dir), device=args.device) as index:
                busy0, total0 = _cpu_jiffies()
                with Probe() as probe:
                    if sampler is not None:
                        sampler.start()
                    start = time.perf_counter()
                    summary = index.add(batch_size=args.batch_size)
                    seconds = time.perf_counter() - start
                    if sampler is not None:
                        sampler.stop()
                busy1, total1 = _cpu_jiffies()
        finally:
            indexer.local_runner = local_runner
            undo()
            for leftover in runs.glob(f"{db.name}*"):
                leftover.unlink()
        row = {
            "variant": name,
            "images_s": round(summary.added / seconds, 2),
            "seconds": round(seconds, 3),
            "parts_s": {k: round(v, 3) for k, v in clocks.spent.items()},
            "machine_busy": round((busy1 - busy0) / max(total1 - total0, 1e-9), 3),
            "threads_cpu_s": probe.threads(),
            "lock_wait": probe.lock(),
            "stages": {k: round(v, 3) for k, v in summary.stages.items()},
        }
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            stages = row["stages"]
            print(
                f"{name:16s} {row['images_s']:9.2f} images/s  {seconds:6.2f} s  parts "
                f"{row['parts_s']}  model {stages.get('model')} captions "
                f"{stages.get('captions')} write {stages.get('write')} waiting "
                f"{stages.get('waiting')}  machine busy {row['machine_busy']:.0%}  lock wait "
                f"{row['lock_wait']}\n{'':16s} threads (CPU s) {row['threads_cpu_s']}",
                flush=True,
            )
        if sampler is not None:
            print(sampler.report(top=8), flush=True)

    def nothing() -> Callable[[], None]:
        return lambda: None

    def flag(
        value: bool, module: Any = storage, name: str = "JSON_CAPTION_ROWS"
    ) -> Callable[[], Callable[[], None]]:
        def setup() -> Callable[[], None]:
            before = getattr(module, name)
            setattr(module, name, value)
            return lambda: setattr(module, name, before)

        return setup

    def interval(ms: float) -> Callable[[], Callable[[], None]]:
        def setup() -> Callable[[], None]:
            before = sys.getswitchinterval()
            sys.setswitchinterval(ms / 1000)
            return lambda: sys.setswitchinterval(before)

        return setup

    print(f"{args.images} photos {size_text}, {args.model}, device {args.device}", flush=True)
    for name in args.variants.split(","):
        if name in ("default", "sampled"):
            once(name, nothing)
        elif name == "executemany":
            once(name, flag(False))
        elif name == "reader-bytes":
            once(name, flag(True, gpudecode, "READERS_SEND_BYTES"))
        elif name == "pipe-pixels":
            once(name, flag(False, slabs, "ENABLED"))
        elif name == "writer-process":
            once(name, nothing, writer_process=True)
        elif name == "cpu-decode":
            once(name, nothing, gpu_decode=False)
        elif re.fullmatch(r"w\d+", name):
            once(name, nothing, workers=int(name[1:]))
        elif re.fullmatch(r"switch[\d.]+", name):
            once(name, interval(float(name[6:])))
        else:
            print(f"unknown variant {name!r}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
