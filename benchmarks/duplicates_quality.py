"""Duplicates on real photos: copies told from look-alikes, tier by tier, and the original kept.

Takes the photos of labelled folders (default: the clothing and texture development sets),
plants edited copies of some of them the way libraries get copies, and indexes everything
together. Every other photo is a look-alike distractor: photos of the same kind (two
different dresses, two patches of one texture) are the hard negatives.

* ``exact`` cases: a byte-for-byte copy, and a PNG saved again with other settings (the same
  pixels in other bytes).
* ``copy`` cases, one edit each: half size, JPEG quality 40, a crop keeping 60% of the area,
  mirrored at JPEG quality 60, turned 90 and 180 degrees, a colour adjustment, and an
  upscale (the original is then a half-size photo: the twice-as-large copy must not be
  kept over it).
* ``similar`` cases: two different photos of one kind given EXIF capture times seconds
  apart (a burst), and two crops of one photo that overlap by less than half.

It reports pair precision and recall per tier, recall per edit kind, and how often the
group of an original keeps the original.

    python benchmarks/duplicates_quality.py                 # both development sets
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
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from imgsearch import Index

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [ROOT.parent / "shared/data/clothing-small", Path("/work/devsets/dtd10")]


def _crop(image: Image.Image, keep: float) -> Image.Image:
    side = keep**0.5
    w, h = round(image.width * side), round(image.height * side)
    left, top = (image.width - w) // 3, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def _colour(image: Image.Image) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(1.12)
    image = ImageEnhance.Contrast(image).enhance(1.1)
    return ImageEnhance.Color(image).enhance(1.2)


# kind -> (edit, JPEG quality or None for PNG)
EDITS = {
    "resized": (
        lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
        90,
    ),
    "jpeg40": (lambda im: im, 40),
    "crop60": (lambda im: _crop(im, 0.6), 90),
    "mirror-q60": (ImageOps.mirror, 60),
    "turn90": (lambda im: im.transpose(Image.Transpose.ROTATE_90), 90),
    "turn180": (lambda im: im.transpose(Image.Transpose.ROTATE_180), 90),
    "colour": (_colour, 90),
    "upscale": (lambda im: im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC), 95),
}
EXACT = ("same-bytes", "same-pixels")


def _labels(data: Path) -> list[tuple[str, str]]:
    with open(data / "labels.csv", newline="") as f:
        return sorted((row["path"], row["label"]) for row in csv.DictReader(f))


def _exif(taken: str) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Benchcam"
    exif.get_ifd(0x8769)[0x9003] = taken
    return exif


def build(datas: list[Path], folder: Path, copies: int, bursts: int, crops: int, seed: int) -> dict:
    """Write originals, copies and similar cases; return the truth about them."""
    rng = random.Random(seed)
    truth: dict = {"source": {}, "kind": {}, "similar": [], "originals": {}, "origin": {}}
    number = 0
    for data in datas:
        rows = _labels(data)
        rng.shuffle(rows)
        by_label: dict[str, list[str]] = {}
        for path, label in rows:
            by_label.setdefault(label, []).append(path)
        # Burst pairs: two photos of one kind, seconds apart; crop pairs: one photo, two crops.
        burst_pairs = []
        labels = sorted(by_label)
        for i in range(bursts):
            members = by_label[labels[i % len(labels)]]
            if len(members) >= 2:
                burst_pairs.append((members.pop(), members.pop()))
        crop_sources = [by_label[labels[i % len(labels)]].pop() for i in range(crops)]
        rest = [p for label in labels for p in by_label[label]]
        rng.shuffle(rest)
        kinds = list(EDITS) + list(EXACT)
        for position, path in enumerate(rest):
            image = ImageOps.exif_transpose(Image.open(data / path)).convert("RGB")
            name = f"p{number:04d}"
            number += 1
            origin = f"{data.name}/{path}"
            if position >= copies:
                image.save(folder / f"{name}.jpg", quality=92)
                truth["source"][f"{name}.jpg"] = f"{name}.jpg"
                truth["origin"][f"{name}.jpg"] = origin
                continue
            kind = kinds[position % len(kinds)]
            if kind == "same-pixels":
                original = f"{name}.png"
                image.save(folder / original, compress_level=9)
                image.save(folder / f"{name}-{kind}.png", compress_level=1)
                copy = f"{name}-{kind}.png"
            else:
                if kind == "upscale":
                    image = image.resize(
                        (image.width // 2, image.height // 2), Image.Resampling.LANCZOS
                    )
                original = f"{name}.jpg"
                image.save(folder / original, quality=95)
                copy = f"{name}-{kind}" + (".jpg")
                if kind == "same-bytes":
                    (folder / copy).write_bytes((folder / original).read_bytes())
                else:
                    edit, quality = EDITS[kind]
                    edit(image).save(folder / copy, quality=quality)
            truth["source"][original] = original
            truth["source"][copy] = original
            truth["origin"][original] = truth["origin"][copy] = origin
            truth["kind"][copy] = kind
            truth["originals"][original] = kind
        for first, second in burst_pairs:
            burst = len(truth["similar"])
            names = []
            for offset, path in enumerate((first, second)):
                image = ImageOps.exif_transpose(Image.open(data / path)).convert("RGB")
                name = f"p{number:04d}-burst.jpg"
                number += 1
                seconds = 10 + 3 * offset + rng.randint(0, 2)
                clock = f"{10 + burst // 60:02d}:{burst % 60:02d}:{seconds:02d}"
                image.save(folder / name, quality=92, exif=_exif(f"2024:06:01 {clock}"))
                truth["source"][name] = name
                truth["origin"][name] = f"{data.name}/{path}"
                names.append(name)
            truth["similar"].append(names)
        for path in crop_sources:
            image = ImageOps.exif_transpose(Image.open(data / path)).convert("RGB")
            w = image.width
            names = [f"p{number:04d}-left.jpg", f"p{number:04d}-right.jpg"]
            number += 1
            image.crop((0, 0, round(w * 0.62), image.height)).save(folder / names[0], quality=92)
            image.crop((round(w * 0.38), 0, w, image.height)).save(folder / names[1], quality=92)
            for n in names:
                truth["source"][n] = n
                truth["origin"][n] = f"{data.name}/{path}"
            truth["similar"].append(names)
    return truth


def _pairs(groups: list, tiers: tuple[str, ...]) -> set[frozenset[str]]:
    """What the groups claim: each other member is a copy (or a similar shot) of the one
    kept. Two crops of one photo in its group are not claimed to be copies of each other."""
    found = set()
    for group in groups:
        if group.tier in tiers:
            keep = Path(group.keep).name
            found.update(frozenset((keep, Path(o.path).name)) for o in group.others)
    return found


OWN_COPIES = ROOT / "benchmarks/labels/dtd10_own_copies.csv"


def own_copies(verdict: str = "copy") -> set[frozenset[str]]:
    """Pairs of development-set photos that are themselves copies of one photo (crops and
    re-saves in the texture set's source: ``copy``) or two overlapping crops of one
    (``overlap``), found by this benchmark and checked by eye. A pair judged a recolouring
    (``recoloured``) is not a copy: it counts as a mistake."""
    with open(OWN_COPIES, newline="") as f:
        rows = csv.DictReader(f)
        return {frozenset((r["path_a"], r["path_b"])) for r in rows if r["verdict"] == verdict}


def score(groups: list, truth: dict) -> dict:
    source = truth["source"]
    origin = truth["origin"]
    known, overlaps = own_copies("copy"), own_copies("overlap")

    def own(pair: frozenset[str], listed: set[frozenset[str]]) -> bool:
        a, b = sorted(pair)
        return source[a] != source[b] and frozenset((origin[a], origin[b])) in listed

    by_source: dict[str, list[str]] = {}
    for name, original in source.items():
        by_source.setdefault(original, []).append(name)
    copy_truth = {
        frozenset(p) for names in by_source.values() for p in itertools.combinations(names, 2)
    }
    similar_truth = {frozenset(p) for p in truth["similar"]}
    found_copies = _pairs(groups, ("exact", "copy"))
    copies = {p for p in found_copies if not own(p, known)}  # claims: kept and other
    found_similar = _pairs(groups, ("similar",))
    similar = {p for p in found_similar if not own(p, overlaps)}
    right = len(copies & copy_truth)
    together = set()  # pairs in one copy group, whichever member is kept
    for group in groups:
        if group.tier != "similar":
            names = [Path(p).name for p in [group.keep, *(o.path for o in group.others)]]
            together.update(frozenset(pair) for pair in itertools.combinations(names, 2))
    by_kind = {}
    for kind in [*EDITS, *EXACT]:
        mine = {p for p in copy_truth if any(truth["kind"].get(n) == kind for n in p)}
        by_kind[kind] = round(len(mine & together) / max(1, len(mine)), 4)
    exact_pairs = {p for p in copy_truth if any(truth["kind"].get(n) in EXACT for n in p)}
    exact_found = {
        frozenset((Path(g.keep).name, Path(o.path).name))
        for g in groups
        for o in g.others
        if o.tier == "exact"
    }
    kept = total = 0
    kept_by_kind: dict[str, list[int]] = {}
    for group in groups:
        if group.tier == "similar":
            continue
        keep = Path(group.keep).name
        original = source.get(keep)
        members = [keep, *(Path(o.path).name for o in group.others)]
        origins = {source.get(m) for m in members}
        if len(origins) != 1 or original not in truth["originals"]:
            continue
        total += 1
        kept += keep == original
        counts = kept_by_kind.setdefault(truth["originals"][original], [0, 0])
        counts[0] += keep == original
        counts[1] += 1
    return {
        "copy_tier": {
            "precision": round(right / len(copies), 4) if copies else 1.0,
            "recall": round(len(copy_truth & together) / max(1, len(copy_truth)), 4),
            "pairs_found": len(copies),
            "true_pairs": len(copy_truth),
            "own_copies_of_the_sets_found": len(found_copies) - len(copies),
        },
        "exact_tier": {
            "precision": round(len(exact_found & exact_pairs) / len(exact_found), 4)
            if exact_found
            else 1.0,
            "recall": round(len(exact_found & exact_pairs) / max(1, len(exact_pairs)), 4),
        },
        "similar_tier": {
            "precision": round(len(similar & similar_truth) / len(similar), 4) if similar else 1.0,
            "recall": round(len(similar & similar_truth) / max(1, len(similar_truth)), 4),
            "similar_cases_called_copies": len(similar_truth & copies),
            "own_overlaps_of_the_sets_found": len(found_similar) - len(similar),
            "pairs_found": len(similar),
            "true_pairs": len(similar_truth),
        },
        "recall_by_kind": by_kind,
        "original_kept": f"{kept}/{total}",
        "original_kept_by_kind": {k: f"{a}/{b}" for k, (a, b) in sorted(kept_by_kind.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="labelled folder (repeat)")
    parser.add_argument("--copies", type=int, default=50, help="originals per set that get an edit")
    parser.add_argument("--bursts", type=int, default=10, help="burst pairs per set")
    parser.add_argument("--crops", type=int, default=10, help="overlapping crop pairs per set")
    parser.add_argument("--model", default="offline")
    parser.add_argument("--threshold", type=float, help="candidate cosine (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="build the photos here and keep them")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    datas = args.data or [d for d in DEFAULT_DATA if (d / "labels.csv").is_file()]
    missing = [d for d in datas if not (d / "labels.csv").is_file()]
    if not datas or missing:
        sys.exit(
            f"no labelled photos at {missing or DEFAULT_DATA} (needs ../shared beside the repo)"
        )
    with tempfile.TemporaryDirectory(prefix="dups-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        truth = build(datas, folder, args.copies, args.bursts, args.crops, args.seed)
        db = folder / ".imgsearch" / "index.db"
        with (
            Index.create(folder, db=db, model=args.model)
            if not db.exists()
            else Index.open(db) as index
        ):
            index.add()
            started = time.perf_counter()
            groups = index.duplicates(args.threshold)
            seconds = time.perf_counter() - started
            threshold = index.duplicate_threshold() if args.threshold is None else args.threshold
    report = {
        "model": args.model,
        "data": [str(d) for d in datas],
        "images": len(truth["source"]),
        "candidate_threshold": threshold,
        "seconds": round(seconds, 2),
        "photos_per_second": round(len(truth["source"]) / seconds, 1),
        **score(groups, truth),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{report['images']} photos from {', '.join(d.name for d in datas)}, {args.model}; "
        f"candidates at image cosine >= {threshold:g}; {seconds:.1f} s "
        f"({report['photos_per_second']} photos/s)"
    )
    for tier in ("exact_tier", "copy_tier", "similar_tier"):
        r = report[tier]
        print(f"{tier.split('_')[0]:>8}: precision {r['precision']:.4f}  recall {r['recall']:.4f}")
    print(
        f"similar cases called copies: {report['similar_tier']['similar_cases_called_copies']}; "
        f"the sets' own copies found (not counted): "
        f"{report['copy_tier']['own_copies_of_the_sets_found']}"
    )
    print(
        "recall by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in report["recall_by_kind"].items())
    )
    print(
        f"original kept: {report['original_kept']}  "
        + ", ".join(f"{k} {v}" for k, v in report["original_kept_by_kind"].items())
    )


if __name__ == "__main__":
    main()
