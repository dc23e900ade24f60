"""``imgsearch evaluate``: index a labeled folder, then measure every scoring method on it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from imgsearch.api import Index
from imgsearch.metrics import read_labels, read_pairs
from imgsearch.results import Evaluation


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
) -> Evaluation:
    """Index a labeled folder (incrementally), then measure every scoring method on it."""
    labels = read_labels(Path(folder))
    pairs = read_pairs(Path(folder))
    with Index.create(folder, db, model, captions, device=device, say=say) as index:
        index.add(
            progress=progress,
            on_skip=(lambda s: say(f"skipped {s.path}: {s.reason}")) if say else None,
        )
        return index.evaluate(labels, pairs, methods, tau)
