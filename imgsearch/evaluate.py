"""``imgsearch evaluate``: index a labeled folder, then measure every scoring method on it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from imgsearch.api import Index
from imgsearch.errors import ImgsearchError
from imgsearch.files import shown
from imgsearch.metrics import read_labels, read_pairs, read_text_queries, recall_at
from imgsearch.results import Evaluation
from imgsearch.scoring import check_score


def evaluate_folder(
    folder: str | os.PathLike,
    db: str | os.PathLike | None = None,
    model: str | None = None,
    device: str | None = None,
    methods: Sequence[str] | None = None,
    tau: float | None = None,
    say: Callable[[str], None] | None = None,
    progress: bool = False,
    captions: str | os.PathLike | None = None,
    text_queries: str | os.PathLike | None = None,
) -> Evaluation:
    """Index a labeled folder (incrementally), then measure every scoring method on it; with
    ``text_queries`` (a path,caption file), also how well each caption finds its photo."""
    check_score(tau)
    labels = read_labels(Path(folder))
    pairs = read_pairs(Path(folder))
    queries = read_text_queries(Path(text_queries)) if text_queries is not None else None
    with Index.create(folder, db, model, captions, device=device, say=say) as index:
        index.add(
            progress=progress,
            on_skip=(lambda s: say(f"skipped {s.path}: {s.reason}")) if say else None,
        )
        report = index.evaluate(labels, pairs, methods, tau)
        if say:
            for path in report.missing:
                where = index.root / path
                why = "no such file" if not where.exists() else "not indexed"
                if not where.resolve().is_relative_to(index.root):
                    why = "outside the folder"
                line = getattr(labels, "lines", {}).get(path, "?")
                say(f"labels.csv line {line}: {shown(path)}: {why}, left out")
        if queries is not None:
            report.text_queries = text_recall(index, queries)
        return report


def text_recall(index: Index, queries: list[tuple[str, str]], k: int = 10) -> dict[str, float]:
    """R@1 and R@10 of text queries: where each caption's own photo ranks among the hits."""
    ranks: list[int | None] = []
    for path, caption in queries:
        target = str(index.root / path)
        if index.image_file(target) is None:
            raise ImgsearchError(f"text query for {path}: that photo is not indexed")
        hits = [h.path for h in index.query_text(caption, k=k)]
        ranks.append(hits.index(target) + 1 if target in hits else None)
    return {"queries": len(queries), **recall_at(ranks)}
