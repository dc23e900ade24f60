"""Near-duplicate finding on real photos: precision and recall against known copies.

Takes photos from a labeled folder (default ../shared/data/clothing-small), makes copies of
some of them the way libraries get copies (resized, re-encoded, cropped, mirrored), indexes
originals and copies together, and checks `Index.duplicates` at several thresholds: a pair
inside a found group is right when both come from one original. Every other original is a
distractor, and same-kind photos (two different dresses) are the hard negatives.

    python benchmarks/duplicates_quality.py --json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from imgsearch import Index

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "resized": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "jpeg40": lambda im: im,  # saved at quality 40 below
    "crop90": lambda im: im.crop(
        (im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)
    ),
    "mirror": ImageOps.mirror,
}


def build(data: Path, folder: Path, copies: int, seed: int) -> dict[str, str]:
    """Write originals and copies; return each file's original (its own name for originals)."""
    with open(data / "labels.csv", newline="") as f:
        paths = sorted(row["path"] for row in csv.DictReader(f))
    random.Random(seed).shuffle(paths)
    source: dict[str, str] = {}
    for number, path in enumerate(paths):
        image = ImageOps.exif_transpose(Image.open(data / path)).convert("RGB")
        name = f"p{number:04d}.jpg"
        image.save(folder / name, quality=95)
        source[name] = name
        if number < copies:
            for kind, make in VARIANTS.items():
                copy = f"p{number:04d}-{kind}.jpg"
                make(image).save(folder / copy, quality=40 if kind == "jpeg40" else 90)
                source[copy] = name
    return source


def score(groups: list, source: dict[str, str]) -> dict[str, float]:
    found = set()
    for group in groups:
        names = [Path(p).name for p in [group.keep, *group.others]]
        found.update(frozenset(pair) for pair in itertools.combinations(names, 2))
    by_source: dict[str, list[str]] = {}
    for name, original in source.items():
        by_source.setdefault(original, []).append(name)
    truth = {
        frozenset(pair) for names in by_source.values() for pair in itertools.combinations(names, 2)
    }
    right = len(found & truth)
    per_kind = {}
    for kind in VARIANTS:
        pairs = {p for p in truth if any(n.endswith(f"-{kind}.jpg") for n in p)}
        pairs = {p for p in pairs if any(n == source[n] for n in p)}  # original with this copy
        per_kind[kind] = round(len(pairs & found) / max(len(pairs), 1), 4)
    return {
        "precision": round(right / len(found), 4) if found else 1.0,
        "recall": round(right / len(truth), 4),
        "recall_by_kind": per_kind,
        "pairs_found": len(found),
        "true_pairs": len(truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/clothing-small")
    parser.add_argument("--copies", type=int, default=100, help="originals that get copies")
    parser.add_argument("--model", default="offline")
    parser.add_argument("--thresholds", default="0.80,0.85,0.88,0.90,0.92,0.95")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.data / "labels.csv").is_file():
        sys.exit(
            f"no labeled photos at {args.data} (the benchmark needs ../shared beside the repo)"
        )
    with tempfile.TemporaryDirectory(prefix="dups-") as tmp:
        folder = Path(tmp)
        source = build(args.data, folder, args.copies, args.seed)
        with Index.create(folder, db=folder / "index.db", model=args.model) as index:
            index.add()
            results = {
                threshold: score(index.duplicates(float(threshold)), source)
                for threshold in args.thresholds.split(",")
            }
    report = {
        "model": args.model,
        "images": len(source),
        "copies_of": args.copies,
        "thresholds": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{len(source)} images ({args.copies} originals with 4 copies each), {args.model}")
    print(f"{'threshold':>9} {'precision':>9} {'recall':>7}  recall by kind")
    for threshold, r in results.items():
        kinds = " ".join(f"{k} {v:.2f}" for k, v in r["recall_by_kind"].items())
        print(f"{threshold:>9} {r['precision']:>9.4f} {r['recall']:>7.4f}  {kinds}")


if __name__ == "__main__":
    main()
