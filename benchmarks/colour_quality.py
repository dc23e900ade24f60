"""Do the pixel-proven colours match what people see? Measured on real clothing photos.

Reads the human labels benchmarks/labels/clothing-small-colours.csv (the garment's colour
in each of the 800 photos of ../shared/data/clothing-small, made by eye before any tuning)
and reports

- (a) the accuracy of ``imgsearch.colours`` subject colour against them, on the model's
  224x224 crop (rows labelled multicolour left out), with a confusion summary;
- (b) the issue's target: clothing-small indexed with the offline model and the packaged
  bank (with its colour captions), then text queries such as "a yellow shirt": how many of
  the top 10 have that colour by the labels.

    python benchmarks/colour_quality.py            # a table
    python benchmarks/colour_quality.py --json     # the same figures as JSON
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from imgsearch.colours import COLOURS, read_colours
from imgsearch.files import load_pixels
from imgsearch.models import preprocess_for

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT.parent / "shared" / "data" / "clothing-small"
LABELS = ROOT / "benchmarks" / "labels" / "clothing-small-colours.csv"
QUERIES = (
    "a red dress",
    "a red shirt",
    "a yellow shirt",
    "a yellow dress",
    "a blue pair of jeans",
    "a black shoe",
    "a white t-shirt",
    "a pink skirt",
    "a green jacket",
    "a grey hoodie",
    "a brown coat",
    "a beige pair of trousers",
    "a purple top",
)


def read_colour_labels(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["path"]: row["colour"] for row in csv.DictReader(handle)}


def subject_accuracy(folder: Path, labels: dict[str, str]) -> dict:
    """Subject colour of each photo's model crop against its label (multicolour left out)."""
    preprocess = preprocess_for("offline")
    confusion: Counter[tuple[str, str]] = Counter()
    for path, label in sorted(labels.items()):
        if label == "multicolour":
            continue
        pixels = load_pixels(folder / path, preprocess)
        confusion[(label, read_colours(pixels.array).subject)] += 1
    total = sum(confusion.values())
    right = sum(n for (truth, found), n in confusion.items() if truth == found)
    per_colour = {}
    for colour in COLOURS:
        row = {found: n for (truth, found), n in confusion.items() if truth == colour}
        count = sum(row.values())
        if count:
            mistakes = sorted(((n, f) for f, n in row.items() if f != colour), reverse=True)
            per_colour[colour] = {
                "photos": count,
                "right": row.get(colour, 0),
                "recall": round(row.get(colour, 0) / count, 3),
                "mistaken_for": {f: n for n, f in mistakes[:3]},
            }
    return {"photos": total, "accuracy": round(right / max(total, 1), 3), "per_colour": per_colour}


def query_precision(folder: Path, labels: dict[str, str], db: Path, k: int = 10) -> dict:
    """Index the folder with the offline model (packaged bank), then how many of each text
    query's top k photos have the query's colour by the labels."""
    from imgsearch import Index

    with Index.create(folder, db=db, model="offline") as ix:
        ix.add()
        results = {}
        for text in QUERIES:
            colour = next(c for c in COLOURS if f" {c} " in f" {text} ")
            hits = ix.query_text(text, k=k)
            right = sum(1 for h in hits if labels.get(_relative(h.path, folder)) == colour)
            results[text] = {"colour": colour, "right": right, "of": len(hits)}
    return results


def _relative(path: str, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--db", type=Path, help="index file (default: a temporary one)")
    parser.add_argument("--skip-queries", action="store_true", help="only part (a)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    labels = read_colour_labels(args.labels)
    report: dict = {"subject_colour": subject_accuracy(args.folder, labels)}
    if not args.skip_queries:
        with tempfile.TemporaryDirectory() as tmp:
            db = args.db or Path(tmp) / "colour.db"
            report["text_queries_top10"] = query_precision(args.folder, labels, db)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    subject = report["subject_colour"]
    print(f"(a) subject colour vs labels: {subject['accuracy']:.1%} of {subject['photos']} photos")
    print(f"    {'colour':8} {'photos':>6} {'right':>5} {'recall':>6}  mistaken for")
    for colour, row in subject["per_colour"].items():
        wrong = ", ".join(f"{f} {n}" for f, n in row["mistaken_for"].items())
        print(f"    {colour:8} {row['photos']:6} {row['right']:5} {row['recall']:6.0%}  {wrong}")
    if "text_queries_top10" in report:
        print("(b) text queries: top 10 with the query's colour (by the labels)")
        for text, row in report["text_queries_top10"].items():
            print(f"    {text:28} {row['right']:2} of {row['of']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
