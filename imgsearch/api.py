"""The Python API: the single way in, for programs and for the command line alike.

``Index`` is a thin front over the rooms below it, each named for what it holds: the
database (``storage.Store``), the model side (``indexer.Embedding``: model, caption bank,
settings), the files derived from the database (``derived.Derived``), and the scoring
methods (``scoring``). Each method here opens what it needs and calls one of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from imgsearch import config, indexer, scoring
from imgsearch.captions import (
    DEFAULT_BANK,
    DEFAULT_SETTINGS,
    CaptionBank,
    CaptionSettings,
    bank_digest,
    read_bank,
)
from imgsearch.collection import Collection, MoveStopped
from imgsearch.derived import Derived
from imgsearch.errors import ImgsearchError
from imgsearch.files import OVER_LIMIT, Limits, relative_path, shown, valid_name
from imgsearch.models import backend, family
from imgsearch.results import (
    Caption,
    Cluster,
    Comparison,
    Description,
    Duplicates,
    Evaluation,
    Graph,
    Hit,
    IndexedFile,
    IndexSummary,
    Layout,
    Moved,
    SetHit,
    Status,
    Text,
)
from imgsearch.search import VectorIndex, parse_size
from imgsearch.selection import Selection, dates_of
from imgsearch.storage import Store, is_url
from imgsearch.vectors import Vectors

if TYPE_CHECKING:
    from imgsearch.models import Model

DB_DIR = ".imgsearch"
DB_NAME = "index.db"

ImageInput = str | os.PathLike | Image.Image
# A term of a combined query: an image, a text, or either with a weight.
Term = ImageInput | Text | tuple[float, ImageInput | Text]

__all__ = [
    "Index",
    "MoveStopped",
    "Status",
    "compare_images",
    "default_db",
    "find_db",
    "parse_size",
]


def default_db(folder: str | os.PathLike) -> Path:
    return Path(folder).expanduser().resolve() / DB_DIR / DB_NAME


def find_db(start: str | os.PathLike | None = None) -> Path:
    """The index of the current folder or of its nearest parent that has one, as git finds .git."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / DB_DIR / DB_NAME
        if candidate.is_file():
            return candidate
    raise ImgsearchError(
        f"no index in {here} or its parents: run 'imgsearch index FOLDER' first, or pass --db"
    )


class Index:
    """An image index: one database (a SQLite file or a PostgreSQL URL), its root folder,
    its model and caption bank.

    >>> index = Index.create("photos")          # or Index.open() inside an indexed folder
    >>> index.add()                              # embeds new and changed photos
    >>> index.query("photos/cat.jpg", k=5)       # -> list[Hit]
    """

    def __init__(
        self,
        store: Store,
        device: str | None = None,
        model: Model | None = None,
        bank: CaptionBank | None = None,
    ):
        self.store = store
        self.device = device
        self.meta = store.meta()
        if "model" not in self.meta:
            raise ImgsearchError(f"{store.name} is not a complete imgsearch index")
        here = store.path.parent if store.path is not None else Path.cwd()  # see _stored_root
        self.root = (here / self.meta["root"]).resolve()
        self.embedding = indexer.Embedding(
            self.model_name, self.settings, store, device, model, bank, Limits.from_meta(self.meta)
        )
        self.derived = Derived(store)
        self.scoring = scoring.Context(
            lambda: self.embedding.bank,
            self.settings,
            self.hybrid_alpha,
            lambda: self.derived.means(lambda: self.bank.vectors.shape[1]),
            concepts=self.settings.concepts > 0 and backend(self.model_name).class_probs,
        )
        self.vectors = Vectors(store, self.derived, self.scoring, self.meta)

    # --- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        db: str | os.PathLike | None = None,
        model: str | None = None,
        device: str | None = None,
    ) -> Index:
        """Open an existing index (``db``, or the one found from the current folder)."""
        path = _db_target(db) if db else find_db()
        index = cls(Store.open(path), device)
        _check_model(index, model)
        return index

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        db: str | os.PathLike | None = None,
        model: str | None = None,
        captions: str | os.PathLike | None = None,
        top_n: int | None = None,
        device: str | None = None,
        say: Callable[[str], None] | None = None,
    ) -> Index:
        """Open the index of ``root`` or make a new one; the model is loaded only for a new one."""
        root_path = Path(root).expanduser().resolve()
        if not root_path.is_dir():
            raise ImgsearchError(f"{root}: no such folder")
        path = _db_target(db) if db else default_db(root_path)
        store = Store.open(path, create=True)
        if "model" not in store.meta():
            # The writer lock before anything is written: a second first run stops at once
            # instead of storing its own caption bank over this one's.
            with store.writer():
                if "model" not in store.meta():  # not made meanwhile by a run that just ended
                    loaded, bank = _new_index(store, root_path, model, captions, top_n, device, say)
                    return cls(store, device, loaded, bank)
        index = cls(store, device)
        _check_model(index, model)
        _check_bank(index, captions)
        if index.root != root_path:
            if say:
                say(f"index root moves from {index.root} to {root_path}")
            index._set_root(root_path)
        return index

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set_root(self, root: Path) -> None:
        stored = _stored_root(self.store, root)
        self.store.set_meta({"root": stored})
        self.meta["root"] = stored
        self.root = root

    # --- properties -----------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.meta["model"]

    @property
    def settings(self) -> CaptionSettings:
        return CaptionSettings.from_json(self.meta["caption_settings"])

    @property
    def top_n(self) -> int:
        return self.settings.top_n

    @property
    def hybrid_alpha(self) -> float:
        return float(self.meta.get("hybrid_alpha", config.HYBRID_ALPHA))

    @property
    def model(self) -> Model:
        """The index's model, loaded on first use (a no-change re-index never needs it)."""
        return self.embedding.model

    @property
    def query_model(self) -> Model:
        """The model single queries run: the loaded model where this process has it, else
        its ONNX export (no torch to import; see ``imgsearch.models.onnx_runtime``)."""
        return self.embedding.query_model

    @property
    def bank(self) -> CaptionBank:
        return self.embedding.bank

    def tau(self, method: str = config.DEFAULT_METHOD) -> float:
        """The decision threshold recorded for ``method`` when this index was made."""
        scorer = scoring.get(method)
        empty = not self.store.count()
        return scorer.threshold(self.scoring, self.meta, family(self.model_name), empty)

    @property
    def default_method(self) -> str:
        """How ``query`` ranks unless told: what the index recorded when it was made (the
        concepts score for a new offline index), else ``config.DEFAULT_METHOD``."""
        return self.meta.get("default_method", config.DEFAULT_METHOD)

    def methods(self, ranking: bool = False) -> list[str]:
        """The scoring methods this index can use (``scoring.names`` less those it keeps no
        vectors for, such as concepts in an index made before they were kept)."""
        return [m for m in scoring.names(ranking) if scoring.get(m).available(self.scoring)]

    def graph_tau(self) -> float:
        return float(self.meta.get("tau.graph", config.GRAPH_TAU[family(self.model_name)]))

    # --- indexing -----------------------------------------------------------

    def add(
        self,
        batch_size: int = config.BATCH_SIZE,
        workers: int | None = None,
        progress: bool = False,
        on_skip: Callable[[indexer.Skipped], None] | None = None,
        files: Iterable[str | os.PathLike] | None = None,
        ray: str | None = None,
        ray_workers: int | None = None,
    ) -> IndexSummary:
        """Bring the index in line with its root folder: add, update, move and drop images.

        ``files`` limits the run to those files (absolute, or relative to the root): listed
        files are added, updated or dropped as usual, indexed files not listed stay as they
        are; a listed folder stands for everything below it. ``ray`` runs the embedding
        on a Ray cluster (an address, or 'auto': the cluster this machine belongs to, else
        a local one) with ``ray_workers`` model workers (default: one per GPU, else one);
        the stored results are the same.
        """
        runner = _runner(self.root, self.embedding, batch_size, workers, ray, ray_workers)
        start = time.perf_counter()
        if not self.root.is_dir():
            raise ImgsearchError(f"the indexed folder {self.root} is missing")
        only = None if files is None else _listed(self.root, files)
        with self.store.writer():
            summary = indexer.update(self.root, self.store, runner, only, on_skip, progress)
            self._record_precision()
            self.derived.clear()
            mark = time.perf_counter()
            if self._calibration_due(summary.added + summary.updated + summary.removed):
                self._calibrate()
            mark = _took(summary.stages, "calibrate", mark)
        if (summary.added or summary.updated or summary.moved or summary.removed) and (
            self.store.count()
        ):
            self.vectors.index(self.default_method)  # built now, so the first query is quick
        mark = _took(summary.stages, "search_index", mark)
        if self.embedding.loaded:  # and the model's export, so is the first text query
            from imgsearch.models import prepare_queries

            prepare_queries(self.embedding.model)
        _took(summary.stages, "query_model", mark)
        summary.seconds = time.perf_counter() - start
        return summary

    def writer(self, busy: str | None = None) -> contextlib.AbstractContextManager[None]:
        """Hold the index's writer lock across several ``add`` runs (they take it again
        for free), as a watcher does. ``busy`` is what a second writer is told meanwhile
        (``{name}``: the index, ``{holder}``: the PID and command of this process)."""
        return self.store.writer(busy)

    def _calibration_due(self, changed: int) -> bool:
        """Whether the taus are to be computed again after ``changed`` images were added,
        changed or removed: on an index never calibrated, else once the changes since
        the last calibration come to ``config.RECALIBRATE_SHARE`` of the collection then."""
        if not changed:
            return False
        since = int(self.meta.get("calibration.changes", "0")) + changed
        at = int(self.meta.get("calibration.images", "0"))
        if at and since < config.RECALIBRATE_SHARE * at:
            self.store.set_meta({"calibration.changes": str(since)})
            self.meta["calibration.changes"] = str(since)
            return False
        return True

    def _record_precision(self) -> None:
        """Keep in the index the number format the model's images last ran in (none
        recorded: float32, as every index made before; bfloat16 or int8 where the CPU runs
        faster so; float16 on CUDA): a run on another machine may differ."""
        precision = self.embedding.precision
        if precision is not None and self.meta.get("precision", "float32") != precision:
            self.store.set_meta({"precision": precision})
            self.meta["precision"] = precision

    def _calibrate(self) -> None:
        """Record each vector method's tau as this collection's scores set it (see
        ``Method.calibrate``), so any model gets a sensible threshold with no labels."""
        # Only methods whose inputs are stored: an index made before some were has none.
        methods = [m for m in scoring.names(ranking=True) if scoring.get(m).available(self.scoring)]
        taus = {f"tau.{m}": str(tau) for m, tau in self.vectors.calibrated_taus(methods).items()}
        if taus:  # none below config.CALIBRATE_MIN images: tried again at the next change
            taus["calibration.images"] = str(self.store.count())
            taus["calibration.changes"] = "0"
            self.store.set_meta(taus)
            self.meta.update(taus)

    def remove(self, path: str | os.PathLike) -> int:
        """Drop a file or a folder from the index (the files themselves are untouched)."""
        relative = self._relative(Path(path), must_exist=False)
        if relative is None:
            raise ImgsearchError(f"{path} is not inside the indexed folder {self.root}")
        with self.store.writer():
            removed = self.store.remove_ids(self.store.ids_under(relative))
        if not removed:
            raise ImgsearchError(f"{path} is not in the index")
        self.derived.clear()
        return removed

    # --- reading ------------------------------------------------------------

    def status(self) -> Status:
        return Status(
            root=str(self.root),
            db=str(self.store.path.resolve()) if self.store.path else self.store.name,
            model=self.model_name,
            captions=self.meta["captions"],
            caption_count=len(self.bank.texts),
            top_n=self.top_n,
            images=self.store.count(),
            size_bytes=self.store.size_on_disk(),
            tau={m: self.tau(m) for m in self.methods()},
            coverage=self.coverage(),
        )

    def bank_outdated(self) -> bool:
        """Whether the index was made with an earlier packaged caption bank than this
        release's (it keeps and uses its own: new captions, such as the colour ones, need a
        new index)."""
        if self.meta.get("captions") != DEFAULT_BANK:
            return False
        return self.meta.get("captions_digest") != bank_digest(read_bank(None)[1])

    def coverage(self) -> float | None:
        """How sure the model is of what the photos show, on average (its top class
        probability; None without classes): where it is below ``config.COVERAGE_LOW``,
        captions describe the collection loosely and image vectors may rank better."""
        value = self.derived.coverage()
        return None if value is None else round(value, 4)

    def captions(self, image: ImageInput) -> list[Caption]:
        """The image's top-N captions with match scores: what its similarity rests on."""
        return self.describe(image).captions(self.bank.texts)

    def query(
        self,
        images: ImageInput | Sequence[ImageInput] | None = None,
        k: int = config.DEFAULT_K,
        under: str | os.PathLike | None = None,
        explain: bool = False,
        method: str | None = None,
        *,
        positive: Sequence[Term] = (),
        negative: Sequence[Term] = (),
        after: str | None = None,
        before: str | None = None,
        camera: str | None = None,
        min_score: float | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """Rank the collection by similarity to the query: ``images`` (averaged) and the
        ``positive`` terms, minus the ``negative`` ones. A term is an image (a path or a PIL
        image), a ``Text``, or a (weight, term) pair. By ``method`` (default: the index's
        own; a query with text ranks in caption space, or by image vectors where the model's
        images and texts share one space).

        ``after``/``before`` (YYYY, YYYY-MM or YYYY-MM-DD; after inclusive, before
        exclusive), ``camera`` (part of the make or model) and ``under`` select the photos;
        ``min_score`` drops weaker hits; ``sort="date"`` orders the best ``k`` above the
        cutoff (``min_score``, else the method's tau) newest first."""
        if images is None:
            images = []
        elif isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        plus = [_term(t) for t in [*images, *positive]]
        minus = [_term(t) for t in negative]
        if not plus:
            raise ImgsearchError("no query given: give an image or a text to look for")
        if sort not in ("score", "date"):
            raise ImgsearchError(f"unknown sort {sort!r}: use score or date")
        min_score = scoring.check_score(min_score, "min-score")
        texts = [t for _, t in plus + minus if isinstance(t, Text)]
        if method is None:
            method = "caption" if texts else self.default_method
        scorer = scoring.get(method, ranking=True)
        if texts:
            self._check_text_method(method)
        text_vectors = {}
        if texts:
            text_vectors = {t: self.embedding.encode_text(t.text) for t in dict.fromkeys(texts)}
        exclude: set[int] = set()
        query_captions: list[int] = []
        total = sum(w for w, _ in plus)
        vector = None
        for sign, terms in ((1.0, plus), (-1.0, minus)):
            for weight, term in terms:
                if isinstance(term, Text):
                    text_vector = text_vectors[term]
                    part = scorer.text(self.scoring, text_vector)
                    if sign > 0 and explain:
                        query_captions += self.bank.top(text_vector, self.top_n)[1][0].tolist()
                else:
                    described = self.describe(term)
                    part = scorer.vector(self.scoring, described)
                    if described.indexed_id is not None:
                        exclude.add(described.indexed_id)
                    if sign > 0:
                        query_captions += described.caption_ids
                part = sign * weight / total * np.asarray(part, dtype=np.float32)
                vector = part if vector is None else vector + part
        allowed = self._selected(under, after, before, camera)
        hits = self._rank(vector, k, allowed, exclude, query_captions if explain else None, method)
        cutoff = min_score
        if sort == "date" and cutoff is None:
            cutoff = self.tau(method)
        if cutoff is not None:
            hits = [h for h in hits if h.score >= cutoff]
        if sort == "date":
            hits.sort(key=lambda h: h.taken or "", reverse=True)
        return hits

    def query_text(
        self,
        text: str,
        k: int = config.DEFAULT_K,
        under: str | os.PathLike | None = None,
        explain: bool = False,
        **options: object,
    ) -> list[Hit]:
        """Rank by the cosine between the text and each image's caption vector (the
        ``query`` options, filters and sorting included, apply)."""
        if not text.strip():
            raise ImgsearchError("the query text is empty")
        positive = [Text(text), *options.pop("positive", ())]  # type: ignore[misc]
        return self.query(positive=positive, k=k, under=under, explain=explain, **options)

    def _check_text_method(self, method: str) -> None:
        """Text terms rank in caption space, or by image vectors where the model puts
        images and texts in one space (CLIP, SigLIP): not the offline model's."""
        if method == "caption":
            return
        if method == "image" and family(self.model_name) != "offline":
            return
        if method == "image":
            raise ImgsearchError(
                "the offline model's image vectors do not share a space with texts: a query "
                "with text ranks by --method caption"
            )
        raise ImgsearchError(f"a query with text ranks by caption (or image), not {method}")

    def _selected(
        self,
        under: str | os.PathLike | None,
        after: str | None,
        before: str | None,
        camera: str | None,
    ) -> list[int] | None:
        """The ids the filters let through (None: all); one clear line when none do."""
        relative = None
        if under is not None:
            relative = self._relative(Path(under), must_exist=False)
            if relative is None:
                raise ImgsearchError(f"{under} is not inside the indexed folder {self.root}")
        chosen = Selection.of(after, before, camera, relative).ids(self.store)
        if chosen is not None and not chosen:
            if relative is not None and not self.store.ids_under(relative):
                raise ImgsearchError(f"nothing is indexed under {under}")
            raise ImgsearchError("no indexed photo fits the date, camera and folder filters")
        return chosen

    def compare(
        self,
        a: ImageInput,
        b: ImageInput,
        methods: Sequence[str] | None = None,
        tau: float | None = None,
    ) -> Comparison:
        """One pair under every scoring method, the verdict at each method's tau, and the
        captions the two images share. ``tau`` overrides the default method's threshold."""
        tau = scoring.check_score(tau)
        methods = self.methods() if methods is None else methods
        taus = {m: self.tau(m) for m in methods}
        if tau is not None and config.DEFAULT_METHOD in taus:
            taus[config.DEFAULT_METHOD] = tau
        return scoring.compare(self.scoring, self.describe(a), self.describe(b), taus)

    def evaluate(
        self,
        labels: dict[str, str],
        pairs: list[tuple[str, str, bool]] | None = None,
        methods: Sequence[str] | None = None,
        tau: float | None = None,
    ) -> Evaluation:
        """Leave-one-out retrieval and pair decisions over the labeled images, per method.
        ``tau`` overrides the default method's threshold."""
        return self._collection().evaluate(labels, pairs, methods, tau)

    def method_vectors(self, method: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Every image's (id, path, vector) for a vector method: inner products are its scores."""
        return self.vectors.of(method)

    # --- relations between images -------------------------------------------

    def _collection(self, filters: dict | None = None) -> Collection:
        """The collection, or the part of it the ``filters`` (after, before, camera,
        under) let through."""
        scope = None
        unknown = set(filters or ()) - {"after", "before", "camera", "under"}
        if unknown:
            raise TypeError(f"unknown filter {sorted(unknown)[0]!r}")
        if filters:
            scope = self._selected(
                filters.get("under"), filters.get("after"), filters.get("before"),
                filters.get("camera"),
            )  # fmt: skip
        return Collection(
            self.root,
            self.store,
            self.vectors,
            self.tau,
            self.graph_tau(),
            self.duplicate_threshold(),
            scope,
        )

    def graph(
        self,
        tau: float | None = None,
        method: str | None = None,
        k: int | None = config.GRAPH_K,
        mutual: bool = config.GRAPH_MUTUAL,
    ) -> Graph:
        """The relationship graph: an edge wherever two images score at least tau.

        The defaults are the graph's own (config.GRAPH_*): in a collection most pairs are
        unrelated, so a tau tuned for balanced pair decisions would link far too much; the
        graph links mutual nearest neighbours by the hybrid score above a stricter tau.
        With ``method`` and no ``tau``, that method's recorded tau applies.
        ``k=None`` keeps every pair at or above tau.
        """
        return self._collection().graph(tau, method, k, mutual)

    def clusters(
        self,
        k: int | None = None,
        tau: float | None = None,
        method: str = config.DEFAULT_METHOD,
        **filters: str | os.PathLike | None,
    ) -> list[Cluster]:
        """Groups of images, each named by the captions most common among its members.

        With ``k``: k-means on the method's vectors (default: config.CLUSTERS_K). With
        ``tau``: the connected components of the relationship graph at tau (see ``graph``;
        an image with no edge is a cluster of one). Every image is in exactly one cluster.
        ``filters``: ``after``, ``before``, ``camera``, ``under``, as ``query`` takes them,
        limit the clusters to the photos they let through.
        """
        return self._collection(filters).clusters(k, tau, method)

    def duplicate_threshold(self) -> float:
        """The image-vector cosine at or above which two photos are candidates to verify."""
        return config.DUPLICATE_THRESHOLD[family(self.model_name)]

    def duplicates(
        self,
        threshold: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        **filters: str | os.PathLike | None,
    ) -> list[Duplicates]:
        """Duplicate groups in tiers (``exact``, ``copy``, ``similar``), each with the photo
        to keep and why, and every other member's score and evidence. Candidates come from
        image vectors at ``threshold`` or above, orientation hashes and capture times; each is
        verified on the pixels. ``progress(done, total)`` follows the verification. Nothing
        on disk is touched."""
        return self._collection(filters).duplicates(threshold, self.limits, progress)

    def duplicates_plan(
        self, groups: list[Duplicates], folder: str | os.PathLike, include_similar: bool = False
    ) -> list[tuple[Path, Path]]:
        """What ``move_duplicates`` would move, and where (before any free-name suffix)."""
        return self._collection().move_plan(groups, folder, include_similar)

    def move_duplicates(
        self, groups: list[Duplicates], folder: str | os.PathLike, include_similar: bool = False
    ) -> list[Moved]:
        """Move the members of ``exact`` and ``copy`` groups but the kept one (and of
        ``similar`` groups with ``include_similar``) into ``folder``, keeping their relative
        paths and never overwriting a file, then bring the index up to date (no model)."""
        try:
            moved = self._collection().move_duplicates(groups, folder, include_similar)
        except MoveStopped as stopped:
            if stopped.moved:
                self.add()  # the index follows the files that did move
            raise
        if moved:
            self.add()
        return moved

    def sets(
        self,
        query: str | os.PathLike,
        k: int = config.DEFAULT_K,
        method: str = config.SET_METHOD,
        min_pair: float | None = None,
        top_m: int | None = None,
        score: str = config.DEFAULT_METHOD,
    ) -> list[SetHit]:
        """Rank the other items (sub-folders of the root, one per item) by how well their
        images match the ``query`` item's, as sets: unordered, of any sizes."""
        return self._collection().sets(query, k, method, min_pair, top_m, score)

    # --- for viewers: the web UI, HTML reports, the map -----------------------

    def refresh(self) -> bool:
        """Forget what this object caches when another process changed the index since the
        last call: a long-lived reader (``imgsearch serve``) calls it before each request."""
        return self.derived.refresh()

    def image_file(self, image: int | str | os.PathLike) -> IndexedFile | None:
        """An indexed image by id or path; None for anything not in the index, or no longer
        a regular file inside the indexed folder. The web UI serves only files found here."""
        if isinstance(image, (int, np.integer)):
            return self.derived.indexed_file(self.root, int(image))
        relative = self._relative(Path(image), must_exist=False)
        return self.derived.indexed_file(self.root, relative) if relative is not None else None

    def thumbnail(
        self, image: int | str | os.PathLike, size: int = config.THUMBNAIL_SIZE
    ) -> bytes | None:
        """A JPEG of an indexed image, longest side ``size``, cached in the user cache folder
        by content hash and size; None when it is not in the index or no longer decodes."""
        from imgsearch.thumbnails import cached_thumbnail

        found = self.image_file(image)
        return cached_thumbnail(found, size) if found is not None else None

    def layout(
        self,
        projection: str = "auto",
        k: int | None = None,
        method: str = config.DEFAULT_METHOD,
        **filters: str | os.PathLike | None,
    ) -> Layout:
        """The collection in two dimensions (t-SNE; PCA for large collections or on request),
        each image with its k-means cluster (``k`` clusters, by default fewer for a small
        collection: ``config.viewer_clusters``): what ``imgsearch map`` draws. ``filters``
        as for ``clusters``."""
        return self._collection(filters).layout(projection, k, method)

    @property
    def limits(self) -> Limits:
        """What one image may cost (file size, decoded pixels, aspect ratio), for indexing,
        queries and uploads alike: as ``set_limits`` recorded, else the defaults."""
        return self.embedding.limits

    def set_limits(
        self,
        max_pixels: int | None = None,
        max_aspect: float | None = None,
        max_file_size: int | None = None,
    ) -> Limits:
        """Record new limits (None keeps one as it is); files skipped for a limit before
        are tried again by the next ``add``."""
        self.embedding.limits = _record_limits(self, max_pixels, max_aspect, max_file_size)
        return self.embedding.limits

    # --- the search index -----------------------------------------------------

    @property
    def index_memory(self) -> int:
        """The memory budget of the search index, in bytes: where the flat vectors would
        exceed it, the compressed kind is built (see ``set_index_memory``)."""
        return self.vectors.memory

    def set_index_memory(self, size: int | str) -> int:
        """Record a new memory budget for the search index ("4GB", "512MB" or bytes); later
        queries build to it, and ``search_index`` rebuilds now. Returns it in bytes."""
        return self.vectors.set_memory(size)

    def search_index(self, method: str | None = None) -> VectorIndex:
        """The method's search index, loaded or (stale, damaged or built to another memory
        budget) rebuilt and saved: what queries use."""
        method = self.default_method if method is None else method
        scoring.get(method, ranking=True)
        if not self.store.count():
            raise ImgsearchError(f"the index at {self.store.name} has no images yet")
        return self.vectors.index(method)

    def _rank(
        self,
        vector: np.ndarray,
        k: int,
        allowed: list[int] | None,
        exclude: set[int],
        query_captions: list[int] | None,
        method: str,
    ) -> list[Hit]:
        if k < 1:
            raise ImgsearchError("-k must be at least 1")
        hits = self.vectors.rank(vector, method, k, allowed, exclude, self.root, query_captions)
        dates = dates_of(self.store, [h.id for h in hits if h.id is not None])
        for hit in hits:
            found = dates.get(hit.id) if hit.id is not None else None
            if found is not None:
                hit.taken, hit.taken_from = found.taken, found.taken_from
                hit.camera, hit.gps = found.camera, found.gps
        return hits

    # --- one image ------------------------------------------------------------

    def describe(self, image: ImageInput) -> Description:
        """Everything the scoring methods need of one image.

        An indexed, unchanged file is read from the index: no model needed.
        """
        if isinstance(image, Image.Image):
            return self.embedding.describe(image)
        path = Path(image).expanduser()
        if not path.exists():
            raise ImgsearchError(f"{image}: no such file")
        if path.is_dir():
            raise ImgsearchError(f"{image} is a folder, not an image")
        return self.embedding.describe_file(path, self._relative(path), image)

    def _relative(self, path: Path, must_exist: bool = True, check_name: bool = True) -> str | None:
        """``path`` relative to the root in POSIX form, or None when it lies outside.
        A name that is not valid UTF-8 is one clear error (``check_name``)."""
        if check_name and not valid_name(str(path)):  # never indexed, and JSON cannot name it
            raise ImgsearchError(
                f"{shown(str(path))}: the file name is not valid UTF-8; rename it to use it"
            )
        return relative_path(self.root, path, must_exist)


def _term(term: Term) -> tuple[float, ImageInput | Text]:
    """(weight, image or text); a weight must be a positive number."""
    weight, value = term if isinstance(term, tuple) else (1.0, term)
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ImgsearchError(f"a query term's weight must be a positive number, not {weight!r}")
    if isinstance(value, Text) and not value.text.strip():
        raise ImgsearchError("a query text is empty")
    return float(weight), value


def _check_model(index: Index, requested: str | None) -> None:
    """Refuse a model other than the one the index was made with."""
    if requested is None:
        return
    from imgsearch.models import model_id

    if model_id(requested) != index.model_name:
        raise ImgsearchError(
            f"this index was made with model {index.model_name!r}, not {requested!r}; "
            "use another --db for a different model"
        )


def _check_bank(index: Index, captions: str | os.PathLike | None) -> None:
    """Refuse a caption bank other than the one the index was made with."""
    if captions is None:
        return
    _, texts = read_bank(captions)
    if bank_digest(texts) != index.meta.get("captions_digest"):
        raise ImgsearchError(
            f"this index was made with the caption bank {index.meta['captions']!r}; "
            "use another --db for a different bank"
        )


def _record_limits(
    index: Index,
    max_pixels: int | None,
    max_aspect: float | None,
    max_file_size: int | None,
) -> Limits:
    current = index.limits
    wanted = Limits(
        current.max_pixels if max_pixels is None else int(max_pixels),
        current.max_aspect if max_aspect is None else float(max_aspect),
        current.max_file_size if max_file_size is None else int(max_file_size),
    )
    if wanted.max_pixels < 1 or wanted.max_file_size < 1:
        raise ImgsearchError("--max-pixels and --max-file-size must be positive")
    if not (math.isfinite(wanted.max_aspect) and wanted.max_aspect >= 1):
        raise ImgsearchError(f"--max-aspect must be a number of 1 or more, not {max_aspect}")
    if wanted != current:
        values = {
            "max_pixels": str(wanted.max_pixels),
            "max_aspect": repr(wanted.max_aspect),
            "max_file_size": str(wanted.max_file_size),
        }
        index.store.set_meta(values)
        index.meta.update(values)
        index.store.forget_skipped_reason(OVER_LIMIT)
    return wanted


def _new_index(
    store: Store,
    root: Path,
    model: str | None,
    captions: str | os.PathLike | None,
    top_n: int | None,
    device: str | None,
    say: Callable[[str], None] | None,
) -> tuple[Model | None, CaptionBank]:
    """Load the model, embed the caption bank and record what a new index is made with:
    its model, bank, caption settings, root and the thresholds in force. The model is None
    where it was not needed here (named, and its bank's vectors cached)."""
    settings = DEFAULT_SETTINGS
    if top_n is not None:
        if top_n < 1:
            raise ImgsearchError("--top-n must be at least 1")
        settings = dataclasses.replace(settings, top_n=top_n)
    from imgsearch.models import load_model, model_id, pick_device
    from imgsearch.models.base import cached_vectors_of

    # A named model whose bank is cached is recorded without being loaded: the indexing
    # run loads it while its decoders start (issue 17: the first photo within 3 s).
    loaded = None
    bank_name, texts = read_bank(captions)
    name = model_id(model) if model is not None else None
    vectors = cached_vectors_of(name, texts) if name is not None else None
    if vectors is None:
        loaded = load_model(model, pick_device(device), say)
        bank_name, bank = indexer.new_bank(loaded, captions, progress=say is not None)
        name = loaded.name
    else:
        bank = CaptionBank(texts, vectors)
    kind = family(name)
    taus = {f"tau.{m}": str(scoring.get(m).tau[kind]) for m in scoring.names()}
    # Concept bags rank better than today's caption score where the model makes them
    # (benchmarks/caption_quality.py); an index records its default, so old ones keep theirs.
    bags = settings.concepts > 0 and backend(name).class_probs
    default = scoring.ConceptScore.name if bags else config.DEFAULT_METHOD
    store.save_bank(
        bank.texts,
        bank.vectors,
        {
            "model": name,
            "captions": bank_name,
            "captions_digest": bank_digest(bank.texts),
            "caption_settings": settings.to_json(),
            "hybrid_alpha": str(config.HYBRID_ALPHA),
            "default_method": default,
            "root": _stored_root(store, root),
            "created": str(time.time()),
            "db_id": secrets.token_hex(16),  # what files derived from it are stamped with
            **({"precision": loaded.precision} if loaded and loaded.precision != "float32" else {}),
            **taus,
            "tau.graph": str(config.GRAPH_TAU[kind]),
        },
    )
    return loaded, bank


def _runner(
    root: Path,
    embedding: indexer.Embedding,
    batch_size: int,
    workers: int | None,
    ray: str | None,
    ray_workers: int | None,
) -> indexer.Runner:
    """How an indexing run embeds its files: in this process, or on a Ray cluster."""
    if batch_size < 1:
        raise ImgsearchError("--batch-size must be at least 1")
    if workers is not None and workers < 1:
        raise ImgsearchError("--workers must be at least 1")
    if ray is not None:
        from imgsearch import distributed

        distributed.require_ray()  # before anything changes
        if workers is not None:
            raise ImgsearchError("--workers sets decode threads; with --ray use --ray-workers")
        return distributed.ray_runner(
            ray, root, embedding, batch_size, ray_workers, embedding.device
        )
    return indexer.local_runner(root, embedding, batch_size, workers)


def _took(stages: dict[str, float], name: str, since: float) -> float:
    """Record in ``stages`` the seconds since ``since`` as ``name``; returns now."""
    now = time.perf_counter()
    stages[name] = now - since
    return now


def _listed(root: Path, files: Iterable[str | os.PathLike]) -> set[str]:
    """Listed files as paths relative to the root; any outside it stops the run."""
    only: set[str] = set()
    outside: list[str] = []
    for entry in files:
        relative = relative_path(root, root / Path(entry).expanduser(), must_exist=False)
        if relative:
            only.add(relative)
        else:
            outside.append(str(entry))
    if outside:
        raise ImgsearchError(
            f"{len(outside)} listed file(s) are not inside the indexed folder {root}, "
            f"e.g. {outside[0]}"
        )
    return only


def _db_target(db: str | os.PathLike) -> str | Path:
    """A database URL as given, or a SQLite file path."""
    return str(db) if is_url(db) else Path(db).expanduser()


def _stored_root(store: Store, root: Path) -> str:
    """How an index records its root folder: relative to a SQLite file, so a library moved
    together with its index keeps working; absolute for a URL, which has no place on disk."""
    if store.path is None:
        return str(root)
    return os.path.relpath(root, store.path.parent.resolve())


def compare_images(
    a: ImageInput,
    b: ImageInput,
    db: str | os.PathLike | None = None,
    model: str | None = None,
    device: str | None = None,
    methods: Sequence[str] | None = None,
    tau: float | None = None,
    say: Callable[[str], None] | None = None,
) -> Comparison:
    """Compare two images with an index's model and bank; with no index, a throwaway one."""
    scoring.check_score(tau)
    if db is not None:
        with Index.open(db, model=model, device=device) as index:
            return index.compare(a, b, methods, tau)
    try:
        found = find_db()
    except ImgsearchError:
        found = None
    if found is not None and model is None:
        with Index.open(found, device=device) as index:
            return index.compare(a, b, methods, tau)
    with (
        tempfile.TemporaryDirectory(prefix="imgsearch-") as folder,
        Index.create(folder, model=model, device=device, say=say) as index,
    ):
        return index.compare(a, b, methods, tau)
