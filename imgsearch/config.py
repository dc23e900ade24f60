"""Defaults in one place: what a new index records, and what commands use unless told otherwise."""

from __future__ import annotations

TOP_N = 10  # captions kept per image (the paper's N)
BATCH_SIZE = 32
DEFAULT_K = 10

# Scores live on a different scale for every (model, method), so tau is per pair.
# A new index records the values in force; --tau overrides them per command.
TAU: dict[str, dict[str, float]] = {
    "offline": {"caption": 0.5, "image": 0.5},
    "clip": {"caption": 0.5, "image": 0.5},
}


def default_tau(model: str, method: str) -> float:
    family = "offline" if model == "offline" else "clip"
    return TAU[family].get(method, 0.5)
