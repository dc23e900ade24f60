"""Peak memory of ``imgsearch index`` as the collection grows: it must not grow with it.

One command, re-runnable::

    python benchmarks/index_memory.py --sizes 1000,3000,10000 --device cuda
    python benchmarks/index_memory.py --sizes 250,1000 --json

For each size, a folder of that many camera photos (12 MP JPEG, quality 90, made as
``index_speed.py`` makes them; the folder links a pool of ``--distinct`` different photos
over and over, so 10^4 files cost 10^4 directory entries, not 30 GB) is indexed by the real
CLI, ``imgsearch index``, in a fresh process, with the random-weight CLIP ViT-B/32 of
``index_speed.py``. The process tree's resident memory (the indexer and its decode workers,
summed) is sampled every 50 ms; its peak is reported next to the indexer process's own peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_speed import (  # noqa: E402 - the same photos and model as the speed benchmark
    REPO,
    hardlink_or_copy,
    machine,
    make_photos,
    save_random_clip,
)


def rss_mb(root: int) -> tuple[float, float]:
    """Resident memory of ``root`` alone and of it with all its descendants, in MB."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            pid = int(status.parent.name)
            parents[pid] = int(fields["PPid"])
            rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
        except (OSError, KeyError, ValueError):
            continue
    family = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    return rss.get(root, 0) / 1024, sum(rss.get(pid, 0) for pid in family) / 1024


def run_index(folder: Path, db: Path, model: str, device: str, env: dict[str, str]) -> dict:
    """Index ``folder`` with the CLI in a new process; sample the tree's memory meanwhile."""
    command = [sys.executable, "-m", "imgsearch.cli", "index", str(folder), "--db", str(db)]
    command += ["--model", model, "--device", device, "--json"]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0.0, 0.0]  # the indexer process, the whole tree
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for i, mb in enumerate(rss_mb(child.pid)):
                peak[i] = max(peak[i], mb)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"imgsearch index failed: {err.decode(errors='replace')[-2000:]}")
    summary = json.loads(out)
    return {
        "added": summary["added"],
        "seconds": round(seconds, 1),
        "peak_tree_rss_mb": round(peak[1]),
        "peak_process_rss_mb": round(peak[0]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,3000,10000", help="collection sizes")
    parser.add_argument("--distinct", type=int, default=256, help="different photos to link")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "memory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workdir = args.workdir.resolve()
    pool = make_photos(workdir / "distinct", args.distinct)
    model = str(save_random_clip(workdir / "clip-vit-b32-random"))
    env = {**os.environ, "IMGSEARCH_CACHE_DIR": str(workdir / "cache")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Embed the caption bank once, outside the measured runs.
    run_index(workdir / "distinct", workdir / "warm.db", model, args.device, env)
    rows = []
    for size in sizes:
        folder = workdir / f"library-{size}"
        if len(list(folder.glob("*.jpg"))) != size:
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(size):
                target = folder / f"img-{i:06d}.jpg"
                if not target.exists():
                    hardlink_or_copy(pool[i % len(pool)], target)
        db = workdir / f"index-{size}.db"
        for stale in workdir.glob(f"index-{size}.db*"):
            stale.unlink()
        row = {"images": size, **run_index(folder, db, model, args.device, env)}
        rows.append(row)
        if not args.json:
            print(
                f"{size:>7} images  {row['seconds']:>7.1f} s  tree peak "
                f"{row['peak_tree_rss_mb']:>6} MB  indexer peak {row['peak_process_rss_mb']} MB",
                flush=True,
            )
    result = {"machine": machine(args.device), "model": "clip ViT-B/32, random", "runs": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"machine: {result['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
