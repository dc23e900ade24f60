"""Defaults in one place: what a new index records, and what commands use unless told otherwise."""

from __future__ import annotations

from imgsearch.captions import CaptionSettings

BATCH_SIZE = 32
DEFAULT_K = 10

# How a new index turns captions into the vector `query` ranks by (see CaptionSettings).
CAPTION_SETTINGS = CaptionSettings()
# Weight of the caption score in the hybrid score; the image score gets the rest.
HYBRID_ALPHA = 0.5

DEFAULT_METHOD = "caption"
VECTOR_METHODS = ("caption", "caption_avg", "image", "hybrid")
PIXEL_METHODS = ("ssim", "fsim")
METHODS = VECTOR_METHODS + PIXEL_METHODS

# Scores live on a different scale for every (model, method), so tau is per pair.
# A new index records the values in force; --tau overrides them per command.
TAU: dict[str, dict[str, float]] = {
    "offline": {
        "caption": 0.5,
        "caption_avg": 0.5,
        "image": 0.5,
        "hybrid": 0.5,
        "ssim": 0.7,
        "fsim": 0.3,
    },
    # CLIP: the paper's tau for its caption score; not calibrated here (no CLIP weights offline).
    "clip": {
        "caption": 0.5,
        "caption_avg": 0.5,
        "image": 0.5,
        "hybrid": 0.5,
        "ssim": 0.7,
        "fsim": 0.3,
    },
}


def model_family(model: str) -> str:
    return "offline" if model == "offline" else "clip"


def default_tau(model: str, method: str) -> float:
    return TAU[model_family(model)][method]


# The relationship graph links mutual nearest neighbours (each among the other's GRAPH_K
# nearest) that also score at least tau: precise links that still reach most images.
GRAPH_K = 5
GRAPH_MUTUAL = True
# k-means clusters when neither --k nor --tau is given.
CLUSTERS_K = 10
# How sets of images are matched by default (see relations.set_similarity).
SET_METHOD = "hungarian"
# Image-vector cosine at or above which two images count as copies of one photo. CLIP:
# a documented default, not calibrated here (no CLIP weights offline).
DUPLICATE_THRESHOLD = {"offline": 0.90, "clip": 0.95}  # offline: benchmarks/duplicates_quality.py


def duplicate_threshold(model: str) -> float:
    return DUPLICATE_THRESHOLD[model_family(model)]
