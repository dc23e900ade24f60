"""How fast ``imgsearch duplicates`` is on 10^4 photos, and what its candidates cost at 10^6.

Two modes, each re-runnable::

    python benchmarks/duplicates_speed.py --photos 10000            # photos mode (default)
    python benchmarks/duplicates_speed.py --mode candidates --candidates 1000000
    python benchmarks/duplicates_speed.py --photos 1000 --json

``--mode photos``: ``--photos N`` photos of which 10% are planted copies. 0.9 N distinct
photos (``--size``, default 640x480 JPEG q90: a gradient, a colour field, 8 to 30 random
shapes, texture at two scales and grain, each from its own seed; no two are copies) are made
once and cached in ``--folder`` (default under the system temp dir); 0.1 N of them, chosen at
random, each get one copy edited the ways duplicates_quality.py plants them (half size, JPEG
q40, a crop keeping 60%, mirrored at q60, turned 90 and 180, a colour adjustment). All are
indexed with ``--model`` (default offline) into a fresh database (indexing photos/s; the model
load apart), then ``index.duplicates()`` is timed: photos/s, the candidate stage (image
vectors, orientation hashes, same bytes) and the verification stage apart, how many pairs were
verified and how many photos' features were read, pair precision and recall of the planted
copies (a group's keep/other pair is right when both come from one original), how often the
original is kept, and the peak RSS (of the whole process, and during the duplicate finding
alone).

``--mode candidates``: candidate generation alone at ``--candidates M`` (default 10^6) on
synthetic data, in a fresh subprocess so that its peak RSS is its own. Unit vectors of
``--dim`` (default 512, CLIP's) around ``--centres`` random centres of lognormal popularity
(within-theme cosines about 0.5 to 0.9, as query_speed.py makes them), 1% of them planted
near-copies of another row of their chunk (the row plus noise, renormalised: cosine 0.93 to
0.999), are generated chunk by chunk (32768 rows, a seeded RNG per chunk) by a ``chunks()``
that can be called again, so the rows never sit whole in memory unless the code under test
holds them. ``vector_candidates(chunks, M, threshold=0.9, k=5)`` runs on them (above
``EXACT_CANDIDATES`` rows: the reduced IVF path; its three passes over the chunks are timed
apart), then ``hash_candidates`` on random orientation hashes (M, 8, 8) uint8, the planted
copies getting their row's hashes in another orientation with 0 to 8 bits flipped per hash
(the radius admits 8). Reported: seconds of each, the pairs found, the recall of the planted
pairs, and the peak RSS after each.

With ``--json`` one JSON object goes to stdout instead of the table. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from duplicates_quality import EDITS  # noqa: E402 - the sibling benchmark's edits
from index_speed import (  # noqa: E402
    hardlink_or_copy,
    peak_rss_mb,
    recipe_folder,
    timed,
    usable_cores,
)

PHOTO_RECIPE = 1  # bump when the recipe changes: cached photos are then made again
SEED = 0
JPEG_QUALITY = 90
COPY_SHARE = 0.10
KINDS = ("resized", "jpeg40", "crop60", "mirror-q60", "turn90", "turn180", "colour")
CHUNK = 32768
PLANTED = 0.01  # share of the synthetic rows that are near-copies
MAX_FLIPS = 8  # bits flipped per orientation hash of a planted copy: 0 to this


def say(message: str) -> None:
    print(f"[duplicates_speed] {message}", file=sys.stderr, flush=True)


def vm(field: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` of this process in MB (Linux), else None."""
    try:
        found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def reset_peak() -> bool:
    """Start ``VmHWM`` again from the current RSS (Linux 4.0+): a stage's own peak. It resets
    ``ru_maxrss`` too, so the process's peak is the largest of the stages' peaks."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Peaks:
    """Peak RSS (MB) stage by stage. Without /proc/self/clear_refs each figure is the peak
    so far (``resets`` is then False)."""

    def __init__(self) -> None:
        self.overall = 0.0
        self.resets = reset_peak()

    def take(self) -> int:
        """The peak since the last call (or since the start), then start again."""
        peak = vm("VmHWM") or peak_rss_mb()
        self.overall = max(self.overall, peak)
        self.resets = reset_peak() and self.resets
        return round(peak)


def measured(work: Callable[[], Any]) -> tuple[Any, dict]:
    """``work()``, its wall seconds, this process's CPU seconds (all its threads) and the
    share of the cores other processes used meanwhile: on a shared machine the CPU seconds
    are the fairer figure."""
    out: list = []
    cpu = time.process_time()
    timing = timed(1, lambda: out.append(work()))
    return out[0], {
        "seconds": round(timing.seconds, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "others_cpu_share": round(timing.others, 3),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> str:
    import cv2
    import faiss

    return (
        f"{cpu_name()}, {usable_cores()} cores, faiss {faiss.__version__}, "
        f"opencv {cv2.__version__}, load avg {os.getloadavg()[0]:.1f} at start"
    )


# --- photos --------------------------------------------------------------------------------


def _make_photo(job: tuple[int, str, tuple[int, int]]) -> int:
    """Photo ``index``: a two-colour gradient, a low-frequency colour field, random shapes,
    texture at two scales and grain. Every choice comes from the photo's own seed, so no two
    photos share a shape, and ORB corners of one match no other under a similarity."""
    import cv2

    index, path, (width, height) = job
    rng = np.random.default_rng([SEED, PHOTO_RECIPE, index])
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3))
    field = rng.standard_normal((rng.integers(3, 9), rng.integers(4, 12), 3)).astype(np.float32)
    field = cv2.resize(field * rng.uniform(15, 45), (width, height), cv2.INTER_CUBIC)
    canvas = Image.fromarray(np.clip(pixels + field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(8, 31))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        size = rng.uniform(0.03, 0.35) * width
        kind = rng.integers(0, 4)
        if kind == 0:
            w, h = size, size * rng.uniform(0.3, 1.5)
            draw.ellipse((x - w, y - h, x + w, y + h), fill=colour)
        elif kind == 1:
            w, h = size, size * rng.uniform(0.3, 1.5)
            draw.rectangle((x - w, y - h, x + w, y + h), fill=colour)
        elif kind == 2:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
            radii = size * rng.uniform(0.4, 1.0, len(angles))
            points = list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles)))
            draw.polygon([(float(a), float(b)) for a, b in points], fill=colour)
        else:
            end = (x + rng.uniform(-1, 1) * size * 2, y + rng.uniform(-1, 1) * size * 2)
            draw.line((x, y, *end), fill=colour, width=int(rng.integers(2, 14)))
    if rng.random() < 0.3:
        canvas = Image.fromarray(cv2.GaussianBlur(np.asarray(canvas), (0, 0), rng.uniform(1, 3)))
    # Texture: blotches (surfaces) and grain (the sensor), so corners are found everywhere.
    blotch = rng.standard_normal((height // 6, width // 6), dtype=np.float32)
    blotch = cv2.resize(blotch * rng.uniform(4, 12), (width, height), cv2.INTER_LINEAR)
    grain = rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(2, 5)
    out = np.asarray(canvas, np.float32) + blotch[..., None] + grain
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(tmp, "JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, path)  # an interrupted run leaves no half-written photo behind
    return index


def make_distinct(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """The first ``count`` distinct photos in ``folder``, made (in parallel) where missing."""
    recipe = {"recipe": PHOTO_RECIPE, "seed": SEED, "size": size, "quality": JPEG_QUALITY}
    recipe_folder(folder, recipe)
    paths = [folder / f"photo-{i:05d}.jpg" for i in range(count)]
    todo = [(i, str(p), size) for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        start = time.perf_counter()
        say(f"making {len(todo)} distinct photos in {folder} (once; cached for later runs)")
        with multiprocessing.Pool(usable_cores()) as pool:
            for done, _ in enumerate(pool.imap_unordered(_make_photo, todo, chunksize=16), 1):
                if done % 1000 == 0:
                    say(f"  {done}/{len(todo)}")
        say(f"made {len(todo)} photos in {time.perf_counter() - start:.1f} s")
    return paths


def build_set(folder: Path, photos: int, size: tuple[int, int], seed: int) -> tuple[Path, dict]:
    """A folder of ``photos`` photos: 90% distinct ones (links into the cache) and 10% copies
    of randomly chosen ones, one edit each. Returns it and the truth: copy name -> (original
    name, kind). Cached too: the same arguments reuse the folder."""
    copies = round(photos * COPY_SHARE)
    distinct = make_distinct(folder / f"distinct-{size[0]}x{size[1]}", photos - copies, size)
    library = folder / f"set-{photos}-{size[0]}x{size[1]}-seed{seed}"
    truth_file = library / ".truth.json"
    wanted = {"recipe": PHOTO_RECIPE, "photos": photos, "size": list(size), "seed": seed}
    if truth_file.is_file():
        saved = json.loads(truth_file.read_text())
        names = [p.name for p in distinct] + list(saved["copies"])
        if saved["made"] == wanted and all((library / n).is_file() for n in names):
            return library, saved["copies"]
    shutil.rmtree(library, ignore_errors=True)
    library.mkdir(parents=True)
    for path in distinct:
        hardlink_or_copy(path, library / path.name)
    rng = random.Random(seed)
    chosen = rng.sample(range(len(distinct)), copies)
    truth = {}
    say(f"planting {copies} copies in {library}")
    for number, row in enumerate(chosen):
        kind = KINDS[number % len(KINDS)]
        original = distinct[row]
        edit, quality = EDITS[kind]
        name = f"{original.stem}-{kind}.jpg"
        with Image.open(original) as image:
            edit(ImageOps.exif_transpose(image).convert("RGB")).save(
                library / name, quality=quality
            )
        truth[name] = [original.name, kind]
    truth_file.write_text(json.dumps({"made": wanted, "copies": truth}))
    return library, truth


class Probe:
    """Times ``Finder``'s stages by wrapping its methods and the functions it calls; every
    wrapper is undone by ``close``. ``Finder`` runs verification in threads: counts are
    taken under a lock."""

    def __init__(self) -> None:
        from imgsearch import collection, copies, duplicates

        self.stats: dict[str, Any] = {
            "judged": 0,
            "features_read": 0,
            "features_s": 0.0,
            "candidates_by_source": {},
        }
        self._lock = threading.Lock()
        self._undo: list[tuple[object, str, object]] = []
        probe = self

        class TimedFinder(duplicates.Finder):
            def _candidates(self, n: int) -> list:
                start = time.perf_counter()
                pairs = super()._candidates(n)
                probe.stats["candidates_s"] = time.perf_counter() - start
                probe.stats["candidate_pairs"] = len(pairs)
                return pairs

            def _verify(self, pairs: list) -> None:
                start = time.perf_counter()
                super()._verify(pairs)
                probe.stats["verify_s"] = time.perf_counter() - start
                probe.stats["verified_pairs"] = len(pairs)
                probe.stats["judged_in_verify"] = probe.stats["judged"]
                tiers: dict[str, int] = {}
                for pair in pairs:
                    tiers[pair.tier or "none"] = tiers.get(pair.tier or "none", 0) + 1
                probe.stats["verified_tiers"] = tiers

            def _judge(self, pair: Any) -> Any:
                with probe._lock:
                    probe.stats["judged"] += 1
                return super()._judge(pair)

        def counted(name: str, function: Callable) -> Callable:
            def run(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                found = function(*args, **kwargs)
                seconds = time.perf_counter() - start
                entry = self.stats["candidates_by_source"].setdefault(name, [0.0, 0])
                entry[0] += seconds
                entry[1] += len(found)
                return found

            return run

        def features(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original_features(*args, **kwargs)
            finally:
                with self._lock:
                    self.stats["features_read"] += 1
                    self.stats["features_s"] += time.perf_counter() - start

        original_features = copies.features
        self._patch(collection, "Finder", TimedFinder)
        self._patch(
            duplicates, "vector_candidates", counted("vectors", duplicates.vector_candidates)
        )
        self._patch(duplicates, "hash_candidates", counted("hashes", duplicates.hash_candidates))
        self._patch(copies, "features", features)

    def _patch(self, owner: object, name: str, value: object) -> None:
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def close(self) -> None:
        for owner, name, value in reversed(self._undo):
            setattr(owner, name, value)


def score(groups: list, truth: dict[str, list[str]], originals: int) -> dict:
    """Pair precision and recall of the planted copies, per kind, and the originals kept."""
    source = {name: original for name, (original, _) in truth.items()}
    planted = {frozenset((name, original)) for name, (original, _) in truth.items()}

    def origin(name: str) -> str:
        return source.get(name, name)

    claimed, tiers = set(), {"exact": 0, "copy": 0, "similar": 0}
    kept = judged = 0
    for group in groups:
        tiers[group.tier] = tiers.get(group.tier, 0) + 1
        if group.tier == "similar":
            continue
        keep = Path(group.keep).name
        names = [Path(o.path).name for o in group.others]
        claimed.update(frozenset((keep, n)) for n in names)
        if len({origin(n) for n in [keep, *names]}) == 1:
            judged += 1
            kept += keep == origin(keep)
    right = {p for p in claimed if len({origin(n) for n in p}) == 1}
    by_kind = {}
    for kind in KINDS:
        mine = {frozenset((n, o)) for n, (o, k) in truth.items() if k == kind}
        by_kind[kind] = round(len(mine & claimed) / max(1, len(mine)), 4)
    return {
        "groups": tiers,
        "pairs_claimed": len(claimed),
        "pairs_right": len(right),
        "planted_pairs": len(planted),
        "precision": round(len(right) / len(claimed), 4) if claimed else 1.0,
        "recall": round(len(planted & claimed) / max(1, len(planted)), 4),
        "recall_by_kind": by_kind,
        "original_kept": f"{kept}/{judged}",
        "distinct_photos": originals,
    }


def photos_mode(args: argparse.Namespace) -> dict:
    size = tuple(int(v) for v in args.size.lower().split("x"))
    folder = Path(args.folder)
    library, truth = build_set(folder, args.photos, size, args.seed)  # before torch is loaded
    from imgsearch import Index

    peaks = Peaks()

    with tempfile.TemporaryDirectory(prefix="dups-speed-") as tmp:
        start = time.perf_counter()
        index = Index.create(library, db=Path(tmp) / "index.db", model=args.model)
        load_s = time.perf_counter() - start
        with index:
            say(f"indexing {args.photos} photos with {args.model}")
            summary, indexing = measured(lambda: index.add(workers=args.workers))
            indexed, skipped = summary.added, len(summary.skipped)
            rss_before = vm("VmRSS")
            peak_indexing = peaks.take()  # the model's load included
            probe = Probe()
            rate = args.photos / indexing["seconds"]
            say(f"finding duplicates ({rate:.1f} photos/s indexing)")
            try:
                found, finding = measured(index.duplicates)
            finally:
                probe.close()
            peak_duplicates = peaks.take()
            threshold = index.duplicate_threshold()
    stats = probe.stats
    by_source = {
        k: {"seconds": round(s, 3), "pairs": n}
        for k, (s, n) in stats["candidates_by_source"].items()
    }
    grouping_s = finding["seconds"] - stats.get("candidates_s", 0.0) - stats.get("verify_s", 0.0)
    result = {
        "mode": "photos",
        "machine": machine(),
        "model": args.model,
        "photos": args.photos,
        "indexed": indexed,
        "skipped": skipped,
        "planted_copies": len(truth),
        "size": f"{size[0]}x{size[1]}",
        "folder": str(library),
        "candidate_threshold": threshold,
        "load_s": round(load_s, 2),
        "indexing": {
            **indexing,
            "photos_per_s": round(args.photos / indexing["seconds"], 2),
            "photos_per_cpu_s": round(args.photos / indexing["cpu_s"], 2),
        },
        "duplicates": {
            **finding,
            "photos_per_s": round(args.photos / finding["seconds"], 2),
            "photos_per_cpu_s": round(args.photos / finding["cpu_s"], 2),
            "candidates_s": round(stats.get("candidates_s", 0.0), 2),
            "candidate_pairs": stats.get("candidate_pairs", 0),
            "candidates_by_source": by_source,
            "verify_s": round(stats.get("verify_s", 0.0), 2),
            "verified_pairs": stats.get("verified_pairs", 0),
            "verified_tiers": stats.get("verified_tiers", {}),
            "verify_pairs_per_s": round(
                stats.get("verified_pairs", 0) / max(stats.get("verify_s", 0.0), 1e-9), 1
            ),
            "features_read": stats["features_read"],
            "features_thread_s": round(stats["features_s"], 2),
            "grouping_s": round(grouping_s, 2),
            "judged_while_grouping": stats["judged"] - stats.get("judged_in_verify", 0),
        },
        **score(found, truth, args.photos - len(truth)),
        "peak_rss_mb_loading_and_indexing": peak_indexing,
        "rss_mb_before_duplicates": round(rss_before) if rss_before else None,
        "peak_rss_mb_during_duplicates": peak_duplicates,
        "peak_rss_mb": round(peaks.overall),
        "peaks_per_stage": peaks.resets,
    }
    return result


def print_photos(r: dict) -> None:
    d = r["duplicates"]
    print(f"machine: {r['machine']}")
    print(
        f"photos:  {r['photos']} ({r['distinct_photos']} distinct + {r['planted_copies']} "
        f"planted copies), {r['size']} JPEG, model {r['model']}, candidates at image cosine "
        f">= {r['candidate_threshold']:g}"
    )
    print()
    print(f"{'stage':<26}{'seconds':>9}{'photos/s':>10}{'pairs':>9}{'cpu_s':>9}{'others':>8}")
    for name, x in (("index (add)", r["indexing"]), ("duplicates (all)", d)):
        print(
            f"{name:<26}{x['seconds']:>9.1f}{x['photos_per_s']:>10.1f}"
            f"{x.get('verified_pairs', ''):>9}{x['cpu_s']:>9.1f}{x['others_cpu_share']:>8.0%}"
        )
    print(f"{'  candidates':<26}{d['candidates_s']:>9.1f}{'':>10}{d['candidate_pairs']:>9}")
    for name, entry in d["candidates_by_source"].items():
        print(f"{'    ' + name:<26}{entry['seconds']:>9.2f}{'':>10}{entry['pairs']:>9}")
    print(f"{'  verification':<26}{d['verify_s']:>9.1f}{'':>10}{d['verified_pairs']:>9}")
    print(
        f"{'  grouping, keep rule':<26}{d['grouping_s']:>9.1f}{'':>10}"
        f"{d['judged_while_grouping']:>9}"
    )
    print()
    print(
        f"verified: {d['verify_pairs_per_s']} pairs/s; tiers {d['verified_tiers']}; features "
        f"read for {d['features_read']} photos ({d['features_thread_s']:.1f} s in threads)"
    )
    print(
        f"groups: {r['groups']}; copy pairs: precision {r['precision']:.4f}  recall "
        f"{r['recall']:.4f}  ({r['pairs_right']} right of {r['pairs_claimed']} claimed, "
        f"{r['planted_pairs']} planted)"
    )
    print("recall by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in r["recall_by_kind"].items()))
    print(f"original kept: {r['original_kept']}")
    print(
        f"peak RSS (MB): {r['peak_rss_mb']} process; {r['peak_rss_mb_loading_and_indexing']} "
        f"loading the model and indexing; {r['peak_rss_mb_during_duplicates']} during "
        f"duplicates (from {r['rss_mb_before_duplicates']} before)"
    )
    print(f"model load + caption bank: {r['load_s']:.1f} s (not in the photos/s)")


# --- candidates at scale -------------------------------------------------------------------


def orientation_table() -> np.ndarray:
    """``table[g][i]``: the orientation of a photo whose hash is the ``i``-th orientation
    hash of its copy turned or mirrored by orientation ``g`` (files.ORIENTATIONS' order)."""
    from imgsearch.files import ORIENTATIONS

    probe = Image.fromarray(np.arange(9, dtype=np.uint8).reshape(3, 3))

    def turned(image: Image.Image, turn: Any) -> Image.Image:
        return image if turn is None else image.transpose(turn)

    seen = [turned(probe, t).tobytes() for t in ORIENTATIONS]
    table = np.empty((8, 8), np.int64)
    for g, copy_turn in enumerate(ORIENTATIONS):
        copy = turned(probe, copy_turn)
        for i, turn in enumerate(ORIENTATIONS):
            table[g, i] = seen.index(turned(copy, turn).tobytes())
    return table


class Synthetic:
    """``m`` unit vectors of ``dim`` around ``centres`` themes, 1% of them near-copies of
    another row of their chunk, made again on every call of ``chunks()``."""

    def __init__(self, m: int, dim: int, centres: int, seed: int):
        self.m, self.dim, self.seed = m, dim, seed
        themes = np.random.default_rng([seed, centres])
        centre = themes.standard_normal((centres, dim), dtype=np.float32)
        self.centre = centre / np.linalg.norm(centre, axis=1, keepdims=True)
        weight = themes.lognormal(0.0, 1.0, centres)
        self.weight = weight / weight.sum()
        self.spread = themes.uniform(0.3, 1.0, centres).astype(np.float32)
        self.passes: list[tuple[float, float]] = []  # (start, end) of each call of chunks()

    def plan(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunk's planted copies: their rows, their sources' rows (global), the noise."""
        start = chunk * CHUNK
        size = min(self.m, start + CHUNK) - start
        rng = np.random.default_rng([self.seed, 1, chunk])
        rows = rng.permutation(size)
        count = round(size * PLANTED)
        copy, source = rows[:count], rows[count : 2 * count]
        sigma = rng.uniform(0.05, 0.4, count).astype(np.float32)  # cosine 1/sqrt(1+s^2)
        return start + copy, start + source, sigma

    def planted(self) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.plan(c)[:2] for c in range((self.m + CHUNK - 1) // CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        began = time.perf_counter()
        for chunk in range((self.m + CHUNK - 1) // CHUNK):
            start = chunk * CHUNK
            stop = min(self.m, start + CHUNK)
            rng = np.random.default_rng([self.seed, 0, chunk])
            label = rng.choice(len(self.weight), stop - start, p=self.weight)
            rows = rng.standard_normal((stop - start, self.dim), dtype=np.float32)
            rows *= self.spread[label, None] / np.sqrt(self.dim)
            rows += self.centre[label]
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            copy, source, sigma = self.plan(chunk)
            noise = rng.standard_normal((len(copy), self.dim), dtype=np.float32)
            near = rows[source - start] + noise * (sigma[:, None] / np.sqrt(self.dim))
            rows[copy - start] = near / np.linalg.norm(near, axis=1, keepdims=True)
            yield np.arange(start, stop), rows
        self.passes.append((began, time.perf_counter()))

    def cosines(self) -> np.ndarray:
        """The planted pairs' cosines (one pass of the chunks)."""
        out = []
        for rows, vectors in self.chunks():
            copy, source, _ = self.plan(int(rows[0]) // CHUNK)
            start = int(rows[0])
            out.append(np.einsum("ij,ij->i", vectors[copy - start], vectors[source - start]))
        return np.concatenate(out)

    def hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(m, 8, 8) uint8 orientation hashes, and the bits flipped for each planted copy."""
        rng = np.random.default_rng([self.seed, 2])
        hashes = rng.integers(0, 256, (self.m, 8, 8), dtype=np.uint8)
        copy, source = self.planted()
        table = orientation_table()
        turns = rng.integers(0, 8, len(copy))
        flips = rng.integers(0, MAX_FLIPS + 1, len(copy))
        for row, src, turn, count in zip(copy, source, turns, flips):
            code = hashes[src][table[turn]]
            bits = np.unpackbits(code, axis=1)  # (8 orientations, 64 bits)
            for orientation in range(8):
                where = rng.choice(64, int(count), replace=False)
                bits[orientation, where] ^= 1
            hashes[row] = np.packbits(bits, axis=1)
        return hashes, flips


def candidates_child(args: argparse.Namespace) -> dict:
    """Runs in its own process: the peak RSS is the candidates' (and the data's) own."""
    import faiss

    from imgsearch import duplicates

    m = args.candidates
    stages = {s.strip() for s in args.stages.split(",")}
    data = Synthetic(m, args.dim, args.centres, args.seed)
    peaks = Peaks()
    rss_start = vm("VmRSS")
    copy, source = data.planted()
    planted = [(int(min(a, b)), int(max(a, b))) for a, b in zip(copy, source)]
    result: dict[str, Any] = {
        "mode": "candidates",
        "machine": machine(),
        "candidates": m,
        "dim": args.dim,
        "centres": args.centres,
        "threshold": args.threshold,
        "k": args.k,
        "path": "reduced IVF" if m > duplicates.EXACT_CANDIDATES else "exact",
        "faiss_threads": faiss.omp_get_max_threads(),
        "planted_pairs": len(planted),
        "rss_mb_at_start": round(rss_start) if rss_start else None,
    }
    if "vectors" in stages:
        say(f"one pass over {m} synthetic rows (the generator's own cost)")
        cosines = data.cosines()
        result["generate_s_per_pass"] = round(data.passes[-1][1] - data.passes[-1][0], 2)
        above = cosines >= args.threshold
        result["planted_at_or_above_threshold"] = int(above.sum())
        data.passes.clear()
        result["peak_rss_mb_generating"] = peaks.take()
        say(f"vector_candidates(chunks, {m}, threshold={args.threshold}, k={args.k})")
        start = time.perf_counter()
        found, timing = measured(
            lambda: duplicates.vector_candidates(data.chunks, m, args.threshold, args.k)
        )
        hit = np.array([pair in found for pair in planted])
        result["vectors"] = {
            **timing,
            "passes_s": [(round(a - start, 2), round(b - start, 2)) for a, b in data.passes],
            "pairs": len(found),
            "recall": round(float(hit.mean()), 4),
            "recall_at_or_above_threshold": round(float(hit[above].mean()), 4),
            "peak_rss_mb": peaks.take(),
        }
        del found
    if "hashes" in stages:
        say("orientation hashes")
        hashes, flips = data.hashes()
        peaks.take()
        say(f"hash_candidates(({m}, 8, 8) uint8)")
        found, timing = measured(lambda: duplicates.hash_candidates(hashes))
        hit = np.array([pair in found for pair in planted])
        result["hashes"] = {
            **timing,
            "pairs": len(found),
            "recall": round(float(hit.mean()), 4),
            "recall_by_flipped_bits": {
                int(f): round(float(hit[flips == f].mean()), 4) for f in np.unique(flips)
            },
            "peak_rss_mb": peaks.take(),
            "input_mb": round(hashes.nbytes / 2**20),
        }
    result["peak_rss_mb"] = round(peaks.overall)
    result["peaks_per_stage"] = peaks.resets
    return result


def candidates_mode(args: argparse.Namespace) -> dict:
    """The candidates in a fresh subprocess, so its peak RSS is not this one's."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", "candidates"]
    for name in ("candidates", "dim", "centres", "threshold", "k", "seed", "stages"):
        command += [f"--{name}", str(getattr(args, name))]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def print_candidates(r: dict) -> None:
    print(f"machine: {r['machine']} ({r['faiss_threads']} faiss threads)")
    print(
        f"rows:    {r['candidates']} synthetic unit vectors, dim {r['dim']}, {r['centres']} "
        f"themes; {r['planted_pairs']} planted near-copies"
        + (
            f" ({r['planted_at_or_above_threshold']} at cosine >= {r['threshold']:g})"
            if "vectors" in r
            else ""
        )
    )
    if "vectors" in r:
        print(
            f"vector_candidates: {r['path']} path, threshold {r['threshold']:g}, k {r['k']}; "
            f"the generator costs {r['generate_s_per_pass']:.1f} s a pass (included below)"
        )
    print()
    print(
        f"{'stage':<20}{'seconds':>9}{'cpu_s':>9}{'others':>8}{'pairs':>10}{'recall':>8}"
        f"{'peak RSS MB':>13}"
    )
    for name, label in (("vectors", "vector_candidates"), ("hashes", "hash_candidates")):
        if name in r:
            x = r[name]
            print(
                f"{label:<20}{x['seconds']:>9.1f}{x['cpu_s']:>9.1f}"
                f"{x['others_cpu_share']:>8.0%}{x['pairs']:>10}{x['recall']:>8.4f}"
                f"{x['peak_rss_mb']:>13}"
            )
    print()
    if "vectors" in r:
        v = r["vectors"]
        print(
            "vector passes over the chunks (start, end s): "
            + ", ".join(f"({a}, {b})" for a, b in v["passes_s"])
        )
        print(
            "vector recall of the planted pairs at or above the threshold: "
            f"{v['recall_at_or_above_threshold']:.4f}"
        )
    if "hashes" in r:
        print(
            "hash recall by bits flipped per hash: "
            + ", ".join(f"{k}: {x:.2f}" for k, x in r["hashes"]["recall_by_flipped_bits"].items())
        )
    extra = []
    if "peak_rss_mb_generating" in r:
        extra.append(f"{r['peak_rss_mb_generating']} during one pass of the generator alone")
    if "hashes" in r:
        extra.append(f"hashes input {r['hashes']['input_mb']} MB")
    print(
        f"peak RSS (MB): {r['peak_rss_mb']} (process; {r['rss_mb_at_start']} at start"
        + "".join(f", {e}" for e in extra)
        + ")"
    )


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("photos", "candidates"), default="photos")
    parser.add_argument("--photos", type=int, default=10000, help="photos mode: how many")
    parser.add_argument("--size", default="640x480", help="photos mode: WIDTHxHEIGHT")
    parser.add_argument(
        "--folder",
        default=str(Path(tempfile.gettempdir()) / "imgsearch-duplicates-speed"),
        help="photos mode: where the photos are made and kept",
    )
    parser.add_argument("--model", default="offline", help="photos mode: the model")
    parser.add_argument("--workers", type=int, help="photos mode: decode workers for indexing")
    parser.add_argument("--candidates", type=int, default=1_000_000, help="candidates mode: rows")
    parser.add_argument("--dim", type=int, default=512, help="candidates mode: 512 is CLIP's")
    parser.add_argument("--centres", type=int, default=3000, help="candidates mode: themes")
    parser.add_argument("--threshold", type=float, default=0.9, help="candidates mode: cosine")
    parser.add_argument("--k", type=int, default=5, help="candidates mode: neighbours")
    parser.add_argument(
        "--stages", default="vectors,hashes", help="candidates mode: vectors, hashes or both"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object, no table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(candidates_child(args)))
        return 0
    result = photos_mode(args) if args.mode == "photos" else candidates_mode(args)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.mode == "photos":
        print_photos(result)
    else:
        print_candidates(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
