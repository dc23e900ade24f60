"""What the writer costs the indexing process: the writer thread against the writer process
(``local_runner(writer_process=...)``), the same records put through the indexer's own
write stage into a new SQLite index.

    python benchmarks/writer_process.py                  # 4,096 records in batches of 32
    python benchmarks/writer_process.py --records 8192 --batch-size 64

Reported per image: this process's CPU time (every thread: the putting thread, and for the
thread writer the writer thread, which holds the GIL meanwhile), the putting thread's own,
the child's (the process writer only), and the wall time. The records are made before the
clock starts, shaped as the offline model's (1280-d image, 384-d caption vectors, a
500-concept bag, 20 captions, photo facts).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from imgsearch import indexer
from imgsearch.files import PhotoFacts
from imgsearch.storage import ImageRecord, Store


def make_records(count: int, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        scores = sorted(rng.random(20).tolist(), reverse=True)
        facts = PhotoFacts("JPEG", quality=90, hashes=rng.bytes(64))
        out.append(
            ImageRecord(
                f"photos/{i // 1000:03d}/IMG_{i:06d}.jpg",
                180_000 + i,
                1_700_000_000 + i,
                f"{rng.integers(2**63):016x}" * 4,
                640,
                480,
                rng.random(1280, np.float32),
                rng.random(384, np.float32),
                rng.integers(0, 20_000, 20).tolist(),
                scores,
                concept_vector=rng.random(500, np.float32),
                class_confidence=0.4,
                facts=facts,
            )  # fmt: skip
        )
    return out


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run(records: list[ImageRecord], batch: int, process: bool, folder: Path) -> dict[str, float]:
    store = Store.open(folder / f"index-{process}.db", create=True)
    with store.writer():
        writer = indexer.BatchWriter(store, len(records))
        self0, children0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
        thread0, wall0 = time.thread_time(), time.perf_counter()
        stage = indexer._write_stage(writer, process)
        for start in range(0, len(records), batch):
            stage.put((records[start : start + batch], []))
        stage.close()
        wall = time.perf_counter() - wall0
        thread = time.thread_time() - thread0
        own = cpu(resource.RUSAGE_SELF) - self0
        child = cpu(resource.RUSAGE_CHILDREN) - children0
    assert writer.stored == len(records) == store.count()
    store.close()
    n = len(records) / 1e6
    return {"parent": own / n, "thread": thread / n, "child": child / n, "wall": wall / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    records = make_records(args.records)
    print(f"{args.records} records, batches of {args.batch_size}; us per image")
    print(f"{'writer':8} {'parent CPU':>11} {'put thread':>11} {'child CPU':>10} {'wall':>8}")
    for _ in range(args.rounds):
        for process in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                r = run(records, args.batch_size, process, Path(tmp))
            name = "process" if process else "thread"
            print(
                f"{name:8} {r['parent']:11.1f} {r['thread']:11.1f} {r['child']:10.1f}"
                f" {r['wall']:8.1f}"
            )


if __name__ == "__main__":
    main()
