"""Tune the caption method of the offline model on a labeled folder, by measurement.

One command, re-runnable::

    python benchmarks/tune_caption.py                      # ../shared/data/clothing-small
    python benchmarks/tune_caption.py --data DIR --json    # also write bench-out/tune-*.json

The offline model runs once over every image of ``labels.csv``; pooled features and ImageNet
logits are cached in ``bench-out/`` (keyed by the data folder), so later runs take seconds.
Every variant is a function logits -> per-image caption vector, ranked by inner product:

1. bridge: the image's text-space vector is the normalised ``softmax(logits / T)``-weighted
   mean of the text vectors of its top-K ImageNet class prompts ("a photo of a {class}");
2. its N best captions in the bank (FAISS inner product) with match scores s;
3. caption vectors c (optionally centred on the bank mean and renormalised: c' = norm(c - mean));
4. mean caption vector sum_i w_i c'_i, with w uniform (the paper), proportional to s, or
   softmax(s / t); optionally minus the collection mean, optionally normalised.

Reported per variant: leave-one-out retrieval (mAP, P@1, P@10; same label = relevant) and pair
decisions on ``pairs.csv`` (best-threshold accuracy and its tau, 5-fold cross-validated
accuracy of a threshold fitted on the other folds, ROC AUC). The table shows each dimension
varied alone from the paper's method (``caption_avg``), a coordinate-ascent search over all
dimensions, the chosen setting (``CHOSEN``), each dimension varied alone from it, and the hybrid
alpha * caption + (1 - alpha) * image. ``d_map`` and ``se`` are the mAP change from the section's
reference and its standard error, paired over queries.

Retrieval figures are means over ``--repeats`` seeded image orders: ``retrieval_metrics`` breaks
score ties by position, and the paper's method gives many images identical caption sets.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from imgsearch.captions import CaptionBank
    from imgsearch.models.offline import OfflineModel

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench-out"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "clothing-small"
CACHE_VERSION = 1  # bump when the feature extraction changes
MAX_N = 50  # captions searched per image; every N <= MAX_N is a prefix of that list
FOLDS = 5
SEED = 0


@dataclass(frozen=True)
class Variant:
    """One way of turning ImageNet logits into a caption-space vector."""

    name: str
    top_k: int = 5  # ImageNet classes in the bridge
    temperature: float = 1.0  # softmax temperature of the bridge
    n: int = 10  # captions per image
    weighting: str = "none"  # none | score | softmax
    weight_t: float = 0.05  # temperature of softmax(score / t)
    center_bank: bool = False  # c' = normalize(c - mean(bank)) before averaging
    center_collection: bool = False  # subtract the collection's mean caption vector
    normalise: bool = False  # unit-length final vector (cosine) instead of the raw mean
    bank: str = "default"  # default | photo-of | first-template | imagenet | no-imagenet

    def settings(self) -> str:
        """A compact description of the settings."""
        weight = {"none": "mean", "score": "w=s"}.get(self.weighting, f"w=sm(s/{self.weight_t})")
        flags = [f"K={self.top_k}", f"T={self.temperature}", f"N={self.n}", weight]
        if self.center_bank:
            flags.append("bank-centred")
        if self.center_collection:
            flags.append("coll-centred")
        if self.normalise:
            flags.append("norm")
        if self.bank != "default":
            flags.append(f"bank={self.bank}")
        return " ".join(flags)


BASELINE = Variant("caption_avg")
# The setting recommended for the indexer (see the report): simple and not clothing-specific.
CHOSEN = Variant(
    "CHOSEN",
    top_k=5,
    temperature=2.0,
    n=20,
    weighting="softmax",
    weight_t=0.1,
    center_collection=True,
    normalise=True,
)
# The runner-up: a smoother bridge and more captions (see the report).
SMOOTH = replace(CHOSEN, name="CHOSEN K=20 N=50", top_k=20, n=50)
BANKS = ("default", "photo-of", "first-template", "imagenet", "no-imagenet")
WEIGHTINGS: tuple[tuple[str, float], ...] = (
    ("none", 0.05),
    ("score", 0.05),
    ("softmax", 0.01),
    ("softmax", 0.02),
    ("softmax", 0.05),
    ("softmax", 0.1),
    ("softmax", 0.2),
    ("softmax", 0.5),
)
# Values each dimension takes, for the one-at-a-time table and the coordinate ascent.
DIMENSIONS: dict[str, list[dict]] = {
    "top_k": [{"top_k": k} for k in (1, 5, 20, 1000)],
    "temperature": [{"temperature": t} for t in (0.5, 1.0, 2.0, 3.0)],
    "n": [{"n": n} for n in (1, 3, 5, 10, 20, 50)],
    "weighting": [{"weighting": w, "weight_t": t} for w, t in WEIGHTINGS],
    "center_bank": [{"center_bank": b} for b in (False, True)],
    "center_collection": [{"center_collection": b} for b in (False, True)],
    "normalise": [{"normalise": b} for b in (False, True)],
    "bank": [{"bank": b} for b in BANKS],
}
# The coordinate ascent moves interacting dimensions together: K with T, N with the weighting.
SEARCH: dict[str, list[dict]] = {
    "bridge": [{**k, **t} for k in DIMENSIONS["top_k"] for t in DIMENSIONS["temperature"]],
    "pooling": [{**n, **w} for n in DIMENSIONS["n"] for w in DIMENSIONS["weighting"]],
    **{k: v for k, v in DIMENSIONS.items() if k not in ("top_k", "temperature", "n", "weighting")},
}
ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 10))


# --------------------------------------------------------------------------- data and model


@dataclass
class Dataset:
    """Everything the variants need, as arrays in labels.csv order."""

    paths: list[str]
    labels: list[str]
    features: np.ndarray  # (n, 1280) pooled CNN features
    logits: np.ndarray  # (n, 1000) ImageNet logits
    pair_a: np.ndarray  # indices into paths
    pair_b: np.ndarray
    same: np.ndarray  # 1 where the pair shares a label


def read_dataset(data: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(paths, labels, pair_a, pair_b, same) from labels.csv and pairs.csv."""
    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        rows = [(r["path"], r["label"]) for r in csv.DictReader(f) if r["path"]]
    paths = [Path(p).as_posix() for p, _ in rows]
    labels = [label for _, label in rows]
    where = {p: i for i, p in enumerate(paths)}
    a: list[int] = []
    b: list[int] = []
    same: list[int] = []
    pairs = data / "pairs.csv"
    if pairs.exists():
        with open(pairs, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                pa, pb = Path(r["path_a"]).as_posix(), Path(r["path_b"]).as_posix()
                if pa in where and pb in where:
                    a.append(where[pa])
                    b.append(where[pb])
                    same.append(int(r["same"]))
    return paths, labels, np.array(a, int), np.array(b, int), np.array(same, int)


def cache_path(data: Path, paths: list[str]) -> Path:
    """bench-out/tune-caption-<data folder name>-<hash of folder, files, version>.npz."""
    key = "\n".join([str(CACHE_VERSION), str(data.resolve()), *paths])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return OUT / f"tune-caption-{data.resolve().name}-{digest}.npz"


def extract(
    data: Path, paths: list[str], model: OfflineModel, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and logits of every image, one model pass, batched."""
    import torch

    from imgsearch.files import decode

    features: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        batch = [
            model.preprocess(decode(data / p, model.input_size).image)
            for p in paths[i : i + batch_size]
        ]
        with torch.inference_mode():
            # preprocess crops to uint8 (as the decode workers do); normalize makes the batch
            pixels = model.preprocess.normalize(np.stack(batch), model.device)
            pooled = model.net.forward_features(pixels)
            logits.append(model.net.classify(pooled).float().cpu().numpy())
            features.append(pooled.float().cpu().numpy())
        done = min(i + batch_size, len(paths))
        print(f"\r  {done}/{len(paths)} images, {time.perf_counter() - start:.0f} s", end="")
    print(file=sys.stdout)
    return np.concatenate(features), np.concatenate(logits)


def load_bank_module() -> ModuleType:
    """scripts/make_caption_bank.py, which defines how the default bank is built."""
    spec = importlib.util.spec_from_file_location(
        "make_caption_bank", REPO / "scripts" / "make_caption_bank.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bank_subsets(texts: list[str]) -> dict[str, np.ndarray]:
    """Row indices of the default bank for each bank variant, from the bank's own recipe."""
    mcb = load_bank_module()
    origin: dict[str, tuple[str, int]] = {}  # lower-cased caption -> (vocab file, template no.)
    for filename, default_kind in mcb.SOURCES:
        for kind, concept in mcb.read_vocab(mcb.VOCAB / filename, default_kind):
            phrase = mcb.with_article(concept)
            for number, template in enumerate(mcb.TEMPLATES[kind]):
                origin.setdefault(template.format(phrase).lower(), (filename, number))
    source = [origin.get(t.lower(), ("?", -1)) for t in texts]
    every = np.arange(len(texts))
    return {
        "default": every,
        "photo-of": every[[t.startswith("a photo of ") for t in texts]],
        "first-template": every[[n == 0 for _, n in source]],
        "imagenet": every[[f == "imagenet.txt" for f, _ in source]],
        "no-imagenet": every[[f != "imagenet.txt" for f, _ in source]],
    }


# --------------------------------------------------------------------------- metrics


def pair_metrics(scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """Best-threshold accuracy and its tau, cross-validated accuracy, ROC AUC."""
    acc, tau = best_threshold(scores, same)
    rng = np.random.default_rng(SEED)
    fold = rng.permutation(len(scores)) % FOLDS
    correct = 0
    for k in range(FOLDS):
        _, t = best_threshold(scores[fold != k], same[fold != k])
        correct += int(((scores[fold == k] >= t) == (same[fold == k] == 1)).sum())
    return {
        "pair_acc": acc,
        "tau": tau,
        "pair_acc_cv": correct / len(scores),
        "auc": roc_auc(scores, same),
    }


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(accuracy, tau) of the rule "same if score >= tau" that is right most often."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    tp = np.concatenate([[0], np.cumsum(y)])  # the first i pairs called "same"
    fp = np.concatenate([[0], np.cumsum(1 - y)])
    acc = (tp + (len(y) - y.sum()) - fp) / len(y)
    valid = np.ones(len(y) + 1, bool)
    valid[1:-1] = s[:-1] > s[1:]  # cut only between distinct scores
    i = int(np.argmax(np.where(valid, acc, -1.0)))
    if i == 0:
        tau = float(s[0]) + 1e-6
    elif i == len(y):
        tau = float(s[-1])
    else:
        tau = float(s[i - 1] + s[i]) / 2
    return float(acc[i]), tau


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Mann-Whitney U / (P * N), ties counted half."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_rank = ends - (counts - 1) / 2  # average 1-based rank of each distinct score
    ranks = mid_rank[inverse]
    pos = same == 1
    p, n = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - p * (p + 1) / 2) / (p * n))


def per_query_ap(vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Leave-one-out average precision of every image (for the noise estimate)."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :-1]
    relevant = codes[order] == codes[:, None]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    return (relevant * hits / ranks).sum(1) / np.maximum(relevant.sum(1), 1)


# --------------------------------------------------------------------------- the variants


class Bench:
    """Cached inputs and the variant -> vectors -> metrics pipeline."""

    def __init__(
        self,
        ds: Dataset,
        class_vectors: np.ndarray,
        bank_vectors: np.ndarray,
        subsets: dict[str, np.ndarray],
        repeats: int = 5,
    ) -> None:
        from imgsearch.metrics import retrieval_metrics
        from imgsearch.models.base import normalize

        self.ds = ds
        self.class_vectors = class_vectors
        self.bank_vectors = bank_vectors
        self.subsets = subsets
        self.repeats = repeats
        self.normalize = normalize
        self.retrieval_metrics = retrieval_metrics
        self.codes = np.unique(np.asarray(ds.labels), return_inverse=True)[1]
        self.image = normalize(ds.features)
        self.image_centred = normalize(self.image - self.image.mean(0))
        self.results: dict[str, dict] = {}
        self.ap: dict[str, np.ndarray] = {}

    def text_space(self, top_k: int, temperature: float) -> np.ndarray:
        """The bridge: normalised probability-weighted mean of the top-K class prompt vectors."""
        z = self.ds.logits / temperature
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        if top_k < p.shape[1]:
            cut = -np.partition(-p, top_k - 1, axis=1)[:, top_k - 1 : top_k]
            p = np.where(p >= cut, p, 0.0)
        return self.normalize(p @ self.class_vectors)

    @cache  # noqa: B019 - one Bench per run
    def bank(self, name: str, centred: bool) -> tuple[CaptionBank, np.ndarray]:
        """The caption bank to search, and the (optionally centred) vectors to average."""
        from imgsearch.captions import CaptionBank

        vectors = self.bank_vectors[self.subsets[name]]
        index = CaptionBank([str(i) for i in range(len(vectors))], vectors)
        if centred:
            vectors = self.normalize(vectors - vectors.mean(0))
        return index, vectors

    @cache  # noqa: B019
    def search(self, name: str, top_k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the MAX_N best captions of every image, best first."""
        index, _ = self.bank(name, False)
        return index.top(self.text_space(top_k, temperature), MAX_N)

    def caption_vectors(self, v: Variant) -> np.ndarray:
        """Per-image caption-space vectors for variant ``v``."""
        scores, ids = self.search(v.bank, v.top_k, v.temperature)
        scores, ids = scores[:, : v.n].astype(np.float64), ids[:, : v.n]
        _, vectors = self.bank(v.bank, v.center_bank)
        if v.weighting == "none":
            w = np.full(scores.shape, 1.0 / v.n)
        elif v.weighting == "score":
            w = np.clip(scores, 0, None)
            w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
        else:
            z = (scores - scores[:, :1]) / v.weight_t
            w = np.exp(z)
            w /= w.sum(1, keepdims=True)
        means = np.einsum("bn,bnd->bd", w, vectors[ids].astype(np.float64))
        if v.center_collection:
            means -= means.mean(0)
        if v.normalise:
            means = self.normalize(means)
        return means.astype(np.float32)

    def measure(self, name: str, settings: str, vectors: np.ndarray) -> dict:
        """Retrieval and pair metrics of ranking by inner products of ``vectors``.

        Equal vectors (images with the same captions) tie, and ``retrieval_metrics`` breaks
        ties by position, so retrieval is averaged over ``repeats`` seeded image orders.
        """
        if name in self.results:
            return self.results[name]
        n = len(self.ds.paths)
        totals = {"map": 0.0, "p@1": 0.0, "p@10": 0.0}
        ap = np.zeros(n)
        for r in range(self.repeats):
            perm = np.random.default_rng(SEED + r).permutation(n)
            ret = self.retrieval_metrics(vectors[perm], [self.ds.labels[i] for i in perm])
            for key in totals:
                totals[key] += float(ret[key]) / self.repeats
            ap[perm] += per_query_ap(vectors[perm], self.codes[perm]) / self.repeats
        row: dict = {"name": name, "settings": settings}
        row.update({k: round(x, 4) for k, x in totals.items()})
        if len(self.ds.same):
            scores = (vectors[self.ds.pair_a] * vectors[self.ds.pair_b]).sum(1)
            row.update({k: round(x, 4) for k, x in pair_metrics(scores, self.ds.same).items()})
        self.results[name] = row
        self.ap[name] = ap
        return row

    def quick_map(self, v: Variant) -> float:
        """mAP of ``v`` (same value as ``measure``), without the other metrics."""
        vectors = self.caption_vectors(v)
        n = len(self.ds.paths)
        total = 0.0
        for r in range(self.repeats):
            perm = np.random.default_rng(SEED + r).permutation(n)
            total += float(per_query_ap(vectors[perm], self.codes[perm]).mean())
        return total / self.repeats

    def variant(self, v: Variant) -> dict:
        return self.measure(v.name, v.settings(), self.caption_vectors(v))

    def hybrid_vectors(self, v: Variant, alpha: float, centred: bool = False) -> np.ndarray:
        """Rows whose inner products are alpha * caption_ip + (1 - alpha) * image_ip."""
        c = self.caption_vectors(v)
        x = self.image_centred if centred else self.image
        return np.concatenate([np.sqrt(alpha) * c, np.sqrt(1 - alpha) * x], axis=1)

    def hybrid(self, v: Variant, alpha: float, centred: bool = False) -> dict:
        """Metrics of the hybrid score."""
        joined = self.hybrid_vectors(v, alpha, centred)
        image = "image coll-centred" if centred else "image"
        return self.measure(
            f"hybrid{'(c)' if centred else ''} a={alpha}", f"{v.name} + {image}", joined
        )

    def accuracy_at(self, vectors: np.ndarray, tau: float) -> float:
        """Pair accuracy of "same if score >= tau"."""
        scores = (vectors[self.ds.pair_a] * vectors[self.ds.pair_b]).sum(1)
        return float(((scores >= tau) == (self.ds.same == 1)).mean())

    def paired_se(self, a: str, b: str) -> float:
        """Standard error of mAP(a) - mAP(b), paired over queries."""
        d = self.ap[a] - self.ap[b]
        return float(d.std(ddof=1) / np.sqrt(len(d)))


def one_at_a_time(bench: Bench, base: Variant, prefix: str = "") -> list[dict]:
    """Every value of every dimension, the others left at ``base``; mAP change vs ``base``."""
    reference = bench.variant(base)
    rows = []
    for dim, values in DIMENSIONS.items():
        for change in values:
            v = replace(base, **change)
            if v == replace(base, name=v.name):
                continue
            label = ", ".join(f"{k}={x}" for k, x in change.items() if k != "weight_t")
            if change.get("weighting") == "softmax":
                label += f"/{change['weight_t']}"
            row = dict(bench.variant(replace(v, name=f"{prefix}{dim}: {label}")))
            row["d_map"] = round(row["map"] - reference["map"], 4)
            row["se"] = round(bench.paired_se(row["name"], base.name), 4)
            rows.append(row)
    return rows


def coordinate_ascent(bench: Bench, start: Variant, rounds: int = 4) -> Variant:
    """Best mAP by changing one group of dimensions at a time until nothing improves."""
    best, best_map = start, bench.quick_map(start)
    seen = {replace(start, name="")}
    for _ in range(rounds):
        improved = False
        for values in SEARCH.values():
            for change in values:
                v = replace(best, **change, name="")
                if v in seen:
                    continue
                seen.add(v)
                got = bench.quick_map(v)
                if got > best_map + 1e-9:
                    best, best_map, improved = v, got, True
        if not improved:
            break
    return replace(best, name=f"search: {best.settings()}")


# --------------------------------------------------------------------------- output

COLUMNS = ("map", "d_map", "se", "p@1", "p@10", "pair_acc", "tau", "pair_acc_cv", "auc")


def table(sections: Iterable[tuple[str, list[dict]]]) -> str:
    """The rows as a fixed-width text table, one block per section."""
    width = max(len(r["name"]) for _, rows in sections for r in rows)
    head = f"{'variant':<{width}}  " + "  ".join(f"{c:>8}" for c in COLUMNS) + "  settings"
    lines = [head]
    for title, rows in sections:
        lines.append(f"-- {title}")
        for r in rows:
            cells = "  ".join(
                f"{r[c]:>8.4f}" if isinstance(r.get(c), float) else f"{'':>8}" for c in COLUMNS
            )
            lines.append(f"{r['name']:<{width}}  {cells}  {r['settings']}")
    return "\n".join(lines)


def prepare(data: Path, batch_size: int, threads: int) -> tuple[Bench, Callable[[], float]]:
    """Load the model, run it (or read the cache), embed bank and class prompts."""
    import torch

    from imgsearch.captions import CaptionBank, read_bank
    from imgsearch.models import load_model
    from imgsearch.models.base import cached_text_vectors

    torch.set_num_threads(threads)
    started = time.perf_counter()
    paths, labels, pair_a, pair_b, same = read_dataset(data)
    model = load_model("offline", torch.device("cpu"))
    cached = cache_path(data, paths)
    if cached.exists():
        with np.load(cached) as z:
            features, logits = z["features"], z["logits"]
        print(f"read features and logits of {len(paths)} images from {cached}")
    else:
        print(f"running the offline model over {len(paths)} images of {data}")
        features, logits = extract(data, paths, model, batch_size)
        OUT.mkdir(exist_ok=True)
        np.savez_compressed(cached, features=features, logits=logits, paths=np.array(paths))
    _, texts = read_bank(None)
    bank = CaptionBank(texts, cached_text_vectors(model, texts))
    class_vectors = model.class_vectors.float().cpu().numpy()
    ds = Dataset(paths, labels, features, logits, pair_a, pair_b, same)
    bench = Bench(ds, class_vectors, bank.vectors, bank_subsets(texts))
    print(f"ready in {time.perf_counter() - started:.1f} s")
    return bench, lambda: time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run every variant, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labeled folder")
    parser.add_argument("--json", action="store_true", help="also write bench-out/*.json")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="image orders averaged")
    args = parser.parse_args(argv)

    bench, elapsed = prepare(args.data, args.batch_size, args.threads)
    bench.repeats = args.repeats
    sizes = {k: len(v) for k, v in bench.subsets.items()}
    print(
        f"{len(bench.ds.paths)} images, {len(set(bench.ds.labels))} labels, "
        f"{len(bench.ds.same)} pairs; banks: {sizes}"
    )

    base = [bench.measure("image", "pooled CNN features, cosine", bench.image)]
    base.append(bench.measure("image coll-centred", "x - mean, cosine", bench.image_centred))
    base.append(bench.variant(BASELINE))
    single = one_at_a_time(bench, BASELINE)
    found = coordinate_ascent(bench, BASELINE)
    chosen = bench.variant(CHOSEN)
    fixed = replace(CHOSEN, name="CHOSEN w/o coll-centring", center_collection=False)
    picked = [bench.variant(v) for v in (found, CHOSEN, SMOOTH, fixed)]
    for v, row in zip((found, SMOOTH, fixed), (picked[0], picked[2], picked[3])):
        row["d_map"] = round(row["map"] - chosen["map"], 4)
        row["se"] = round(bench.paired_se(v.name, CHOSEN.name), 4)
    around = one_at_a_time(bench, CHOSEN, prefix="CHOSEN ")
    hybrid = [bench.hybrid(CHOSEN, alpha) for alpha in ALPHAS]
    hybrid_c = [bench.hybrid(CHOSEN, alpha, centred=True) for alpha in ALPHAS]
    sections = [
        ("baselines", base),
        ("one dimension at a time from caption_avg (d_map, se: vs caption_avg)", single),
        ("search (coordinate ascent on mAP), CHOSEN, variants (d_map, se: vs CHOSEN)", picked),
        ("one dimension at a time from CHOSEN (d_map, se: vs CHOSEN)", around),
        ("hybrid: alpha * CHOSEN + (1 - alpha) * image", hybrid),
        ("hybrid(c): alpha * CHOSEN + (1 - alpha) * coll-centred image", hybrid_c),
    ]
    print(table(sections))
    image_map = base[0]["map"]
    best_hybrid = max(hybrid, key=lambda r: r["map"])
    print("\nmAP differences, +- paired standard error over queries:")
    for a, b in (("CHOSEN", "caption_avg"), (found.name, "CHOSEN"), ("CHOSEN", "image")):
        diff = bench.results[a]["map"] - bench.results[b]["map"]
        print(f"  {a} - {b}: {diff:+.4f} +- {bench.paired_se(a, b):.4f}")
    if len(bench.ds.same):
        alpha = float(best_hybrid["name"].split("=")[1])
        print("pair accuracy around the best tau (tau-0.05 / tau / tau+0.05):")
        for row, vectors in (
            (base[0], bench.image),
            (chosen, bench.caption_vectors(CHOSEN)),
            (best_hybrid, bench.hybrid_vectors(CHOSEN, alpha)),
        ):
            accs = [bench.accuracy_at(vectors, row["tau"] + d) for d in (-0.05, 0.0, 0.05)]
            print(f"  {row['name']}: tau {row['tau']:.4f}: " + " / ".join(f"{a:.4f}" for a in accs))
    targets = {
        "caption_map_within_10pct_of_image": chosen["map"] >= 0.9 * image_map,
        "caption_pair_acc_ge_0.90": chosen.get("pair_acc", 0.0) >= 0.90,
        "hybrid_map_beats_image": best_hybrid["map"] > image_map,
    }
    print(
        f"targets on this set: caption mAP {chosen['map']:.4f} vs 0.9 * image "
        f"{0.9 * image_map:.4f}; caption pair acc {chosen.get('pair_acc')}; "
        f"best hybrid {best_hybrid['name']} mAP {best_hybrid['map']:.4f} vs image {image_map:.4f}"
    )
    print("  " + ", ".join(f"{k}: {'yes' if ok else 'no'}" for k, ok in targets.items()))
    print(f"total {elapsed():.1f} s")
    if args.json:
        OUT.mkdir(exist_ok=True)
        path = OUT / f"tune-caption-{args.data.resolve().name}.json"
        report = {
            "data": str(args.data.resolve()),
            "chosen": asdict(CHOSEN),
            "search_best": asdict(found),
            "targets": targets,
            "rows": [r for _, rows in sections for r in rows],
        }
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
