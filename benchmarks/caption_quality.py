"""Caption-score quality with the offline model: today's caption score, the concept bags,
the image vectors, the hybrid and the concepts' hybrid, side by side on labeled folders.

One command, re-runnable (each folder is indexed once into ``bench-out/``, then only
measured)::

    python benchmarks/caption_quality.py                          # ../shared/data/clothing-small
    python benchmarks/caption_quality.py DIR [DIR ...] [--json]

Each folder needs a ``labels.csv`` (path,label); ``pairs.csv`` is optional (pairs are
sampled from the labels when it is missing). The figures are ``imgsearch evaluate``'s:
leave-one-out mAP and P@k, pair accuracy at the method's default tau and at the best
threshold, and ROC AUC; below each table, the concepts score's mAP as a share of the
image score's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from imgsearch.evaluate import evaluate_folder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-small"
METHODS = ["caption", "concepts", "image", "hybrid", "concept_hybrid"]


def database(folder: Path) -> Path:
    """Where a folder's index is kept: never inside the data folder."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return ROOT / "bench-out" / f"caption-quality-{folder.name}-{key}.db"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[DEFAULT_DATA])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    results = {}
    for folder in args.folders:
        db = database(folder)
        db.parent.mkdir(parents=True, exist_ok=True)
        report = evaluate_folder(folder, db=db, model="offline", methods=methods)
        results[str(folder)] = report.to_dict()
        if not args.json:
            print(f"== {folder}")
            print(report.table())
            if "concepts" in report.methods and "image" in report.methods:
                ratio = report.methods["concepts"]["map"] / report.methods["image"]["map"]
                print(f"concepts mAP / image mAP: {ratio:.3f}")
            print()
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
