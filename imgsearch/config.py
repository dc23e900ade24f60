"""Defaults in one place: plain values that commands use unless told otherwise.

Nothing here imports from imgsearch: every layer may read it. Thresholds live with the
scoring methods they judge (``imgsearch.scoring``), caption settings with the caption bank
(``imgsearch.captions``).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

BATCH_SIZE = 32
DEFAULT_K = 10
DEFAULT_METHOD = "caption"

# Weight of the caption score in the hybrid score; the image score gets the rest.
HYBRID_ALPHA = 0.3

# The search index's memory budget (bytes; `imgsearch index --index-memory` records another):
# where the flat float32 vectors would exceed it (10^6 CLIP vectors take 2 GB, 10^7 20 GB),
# the compressed kind (IVF lists of PQ codes, exact vectors re-read from disk) is built.
# A fixed size, not a share of this machine's RAM, so an index is the same on every machine.
INDEX_MEMORY = 4 << 30

# Each `index` run calibrates every vector method's tau on the collection (random pairs
# of a random sample of CALIBRATE_SAMPLE images) once it has CALIBRATE_MIN images.
CALIBRATE_MIN = 50
CALIBRATE_SAMPLE = 2000
CALIBRATE_PAIRS = 100_000
# ... and again once the images added, changed or removed since then come to this share of
# the collection: a few photos more barely move a statistic of 100,000 random pairs, and
# computing it takes seconds at 10^4 images (a watcher would pay that at every batch).
RECALIBRATE_SHARE = 0.05

# Coverage: how sure the model is, on average over the collection, of what each photo
# shows (the offline model's top class probability). Below COVERAGE_LOW the captions
# describe the collection loosely, and `query` says that another method may rank better:
# clothing-small averages 0.46 (concepts 1.11x the image vectors' mAP), the textures 0.34
# (0.95x, and concept_hybrid above both).
COVERAGE_LOW = 0.40

# The relationship graph links mutual nearest neighbours (each among the other's GRAPH_K
# nearest) whose hybrid score is at least the graph's tau: precise links that still reach
# most images (benchmarks/relations_quality.py; offline calibrated on the development set,
# clip and siglip documented defaults). Keyed by model family (imgsearch.models.family).
GRAPH_METHOD = "hybrid"
GRAPH_K = 5
GRAPH_MUTUAL = True
GRAPH_TAU = {"offline": 0.56, "clip": 0.5, "siglip": 0.5}
# k-means clusters when neither --k nor --tau is given.
CLUSTERS_K = 10
# How sets of images are matched by default (see relations.set_similarity).
SET_METHOD = "hungarian"
# Image-vector cosine at or above which two photos are candidate copies, to verify, by model
# family. offline: benchmarks/duplicates_quality.py; CLIP and SigLIP: documented defaults,
# not calibrated here (no trained weights offline). Candidates only now: every candidate
# pair is verified on the pixels (imgsearch.copies).
DUPLICATE_THRESHOLD = {"offline": 0.70, "clip": 0.85, "siglip": 0.85}
# Two photos captured at most this many seconds apart (EXIF) and at least as close in image
# vectors as the index's calibrated image tau are one scene shot twice: the similar tier.
BURST_SECONDS = 10.0


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
