"""Defaults in one place: what a new index records, and what commands use unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from imgsearch.captions import CaptionSettings

BATCH_SIZE = 32
DEFAULT_K = 10

# How a new index turns captions into the vector `query` ranks by (see CaptionSettings);
# measured best on the development set by benchmarks/tune_caption.py.
CAPTION_SETTINGS = CaptionSettings(
    top_n=20, weighting="softmax", temperature=0.1, center_collection=True
)
# Weight of the caption score in the hybrid score; the image score gets the rest.
HYBRID_ALPHA = 0.3

# The search index's memory budget (bytes; `imgsearch index --index-memory` records another):
# where the flat float32 vectors would exceed it (10^6 CLIP vectors take 2 GB, 10^7 20 GB),
# the compressed kind (IVF lists of PQ codes, exact vectors re-read from disk) is built.
# A fixed size, not a share of this machine's RAM, so an index is the same on every machine.
INDEX_MEMORY = 4 << 30

DEFAULT_METHOD = "caption"
VECTOR_METHODS = ("caption", "caption_avg", "image", "hybrid")
PIXEL_METHODS = ("ssim", "fsim")
METHODS = VECTOR_METHODS + PIXEL_METHODS

# Scores live on a different scale for every (model, method), so tau is per pair.
# A new index records the values in force; --tau overrides them per command.
# offline: the best-accuracy thresholds on the development set (clothing-small's pairs).
# clip: documented defaults, not calibrated here (no CLIP weights can be had offline): the
# paper's 0.5 for its caption average; centred scores (caption, hybrid) put unrelated
# images near 0, as for the offline model; CLIP image embeddings of related photos are
# mostly above 0.7.
# SSIM and FSIM do not depend on the model.
TAU: dict[str, dict[str, float]] = {
    "offline": {
        "caption": 0.09,
        "caption_avg": 0.53,
        "image": 0.37,
        "hybrid": 0.05,
        "ssim": 0.35,
        "fsim": 0.65,
    },
    "clip": {
        "caption": 0.1,
        "caption_avg": 0.5,
        "image": 0.7,
        "hybrid": 0.1,
        "ssim": 0.35,
        "fsim": 0.65,
    },
}
# With no collection to centre on (two images compared without an index), the caption
# score is the plain cosine of the two caption vectors, on its own scale.
TAU_UNCENTERED = {"offline": 0.8, "clip": 0.8}


def model_family(model: str) -> str:
    return "offline" if model == "offline" else "clip"


def default_tau(model: str, method: str) -> float:
    return TAU[model_family(model)][method]


# The relationship graph links mutual nearest neighbours (each among the other's GRAPH_K
# nearest) whose hybrid score is at least the graph's tau: precise links that still reach
# most images (benchmarks/relations_quality.py; offline calibrated on the development set,
# clip a documented default).
GRAPH_METHOD = "hybrid"
GRAPH_K = 5
GRAPH_MUTUAL = True
GRAPH_TAU = {"offline": 0.56, "clip": 0.5}
# k-means clusters when neither --k nor --tau is given.
CLUSTERS_K = 10
# How sets of images are matched by default (see relations.set_similarity).
SET_METHOD = "hungarian"
# Image-vector cosine at or above which two images count as copies of one photo. CLIP:
# a documented default, not calibrated here (no CLIP weights offline).
DUPLICATE_THRESHOLD = {"offline": 0.90, "clip": 0.95}  # offline: benchmarks/duplicates_quality.py


def default_graph_tau(model: str) -> float:
    return GRAPH_TAU[model_family(model)]


def duplicate_threshold(model: str) -> float:
    return DUPLICATE_THRESHOLD[model_family(model)]


def cache_dir() -> Path:
    """The per-user cache folder ($IMGSEARCH_CACHE_DIR overrides): embedded caption banks,
    and the files a database URL has no folder beside it to keep. Here, not beside the
    models, so that finding it does not load torch."""
    override = os.environ.get("IMGSEARCH_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("imgsearch"))


# Viewers: the web UI (`imgsearch serve`), HTML reports and the map.
SERVE_PORT = 8000
THUMBNAIL_SIZE = 256  # longest side of a grid thumbnail, in pixels
UPLOAD_LIMIT = 20 * 1024 * 1024  # bytes; a larger query upload is refused (413)
TSNE_MAX_IMAGES = 3000  # t-SNE up to this many images; PCA above (t-SNE grows as n log n)


def viewer_clusters(images: int) -> int:
    """k-means clusters a viewer shows unless told: CLUSTERS_K, or about sqrt(n) for a small
    collection, so that nine photos are not nine clusters of one."""
    return max(1, min(CLUSTERS_K, round(images**0.5)))
