"""Record or check golden outputs (see tests/golden.py): every command's output on a folder.

    python scripts/golden.py --photos --update           # re-record tests/golden/photos.json
    python scripts/golden.py --data ../shared/data/clothing-small --out bench-out/golden.json
    python scripts/golden.py --data ../shared/data/clothing-small --check bench-out/golden.json

``--data`` indexes a copy of the folder (its labels.csv and pairs.csv come along), so the
dev set itself is never written to.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import golden  # noqa: E402


def record_folder(data: Path, work: Path) -> dict:
    root = work / data.name
    shutil.copytree(data, root, ignore=shutil.ignore_patterns(".imgsearch"))
    images = sorted(p for p in root.rglob("*.jpg"))
    queries = [images[0], images[len(images) // 2]]
    texts = ["a red dress", "a pair of blue jeans", "a striped pattern"]
    return golden.record(root, queries, (images[0], images[1]), texts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", action="store_true", help="the test photos (CI's golden)")
    parser.add_argument("--data", type=Path, help="a labeled folder, e.g. a dev set")
    parser.add_argument("--out", type=Path, help="write the outputs here")
    parser.add_argument("--check", type=Path, help="compare with outputs recorded earlier")
    parser.add_argument("--update", action="store_true", help="re-record tests/golden/photos.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="golden-") as work:
        os.environ.setdefault("IMGSEARCH_CACHE_DIR", str(REPO / "bench-out" / "cache"))
        if args.photos:
            from tests.test_golden import GOLDEN, record_library

            data = record_library(Path(work) / "library")
            if args.update:
                golden.save(data, GOLDEN)
                print(f"wrote {GOLDEN}")
            args.check = args.check or (None if args.update else GOLDEN)
        elif args.data:
            data = record_folder(args.data.resolve(), Path(work))
        else:
            parser.error("give --photos or --data")
    if args.out:
        golden.save(data, args.out)
        print(f"wrote {args.out}")
    if args.check:
        found = golden.differences(golden.load(args.check), data)
        print("\n".join(found[:50]) if found else "identical")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
