"""The Python API: the single way in, for programs and for the command line alike."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from imgsearch import config, relations
from imgsearch.captions import (
    PAPER,
    CaptionBank,
    CaptionSettings,
    bank_digest,
    centered,
    read_bank,
)
from imgsearch.errors import ImgsearchError
from imgsearch.evaluate import Evaluation, read_labels, read_pairs
from imgsearch.files import OVER_LIMIT, BadImage, Limits, decode, shown, valid_name
from imgsearch.indexer import IndexSummary, Skipped, embed_files, plan
from imgsearch.search import Caption, Hit, VectorIndex, needs_compression
from imgsearch.storage import Store, is_url

if TYPE_CHECKING:
    from imgsearch.models import Model

DB_DIR = ".imgsearch"
DB_NAME = "index.db"

ImageInput = str | os.PathLike | Image.Image


@dataclass
class Status:
    """What ``imgsearch status`` shows."""

    root: str
    db: str
    model: str
    captions: str
    caption_count: int
    top_n: int
    images: int
    size_bytes: int
    tau: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


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

    def __init__(self, store: Store, device: str | None = None, model: Model | None = None):
        self.store = store
        self.device = device
        self._model = model
        self._bank: CaptionBank | None = None
        self._vectors: dict = {}  # per-method search indexes and the caption mean, until changes
        self.meta = store.meta()
        if "model" not in self.meta:
            raise ImgsearchError(f"{store.name} is not a complete imgsearch index")
        here = store.path.parent if store.path is not None else Path.cwd()  # see _stored_root
        self.root = (here / self.meta["root"]).resolve()

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
        index._check_model(model)
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
        meta = store.meta()
        if "model" in meta:
            index = cls(store, device)
            index._check_model(model)
            index._check_bank(captions)
            if index.root != root_path:
                if say:
                    say(f"index root moves from {index.root} to {root_path}")
                index._set_root(root_path)
            return index
        settings = config.CAPTION_SETTINGS
        if top_n is not None:
            if top_n < 1:
                raise ImgsearchError("--top-n must be at least 1")
            settings = dataclasses.replace(settings, top_n=top_n)
        from imgsearch.models import load_model, pick_device

        loaded = load_model(model, pick_device(device), say)
        bank_name, texts = read_bank(captions)
        bank = CaptionBank.embed(loaded, texts)
        store.save_bank(
            texts,
            bank.vectors,
            {
                "model": loaded.name,
                "captions": bank_name,
                "captions_digest": bank_digest(texts),
                "caption_settings": settings.to_json(),
                "hybrid_alpha": str(config.HYBRID_ALPHA),
                "root": _stored_root(store, root_path),
                "created": str(time.time()),
                **{f"tau.{m}": str(config.default_tau(loaded.name, m)) for m in config.METHODS},
                "tau.graph": str(config.default_graph_tau(loaded.name)),
            },
        )
        index = cls(store, device, loaded)
        index._bank = bank
        return index

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_model(self, requested: str | None) -> None:
        if requested is None:
            return
        from imgsearch.models import model_id

        if model_id(requested) != self.model_name:
            raise ImgsearchError(
                f"this index was made with model {self.model_name!r}, not {requested!r}; "
                "use another --db for a different model"
            )

    def _check_bank(self, captions: str | os.PathLike | None) -> None:
        if captions is None:
            return
        _, texts = read_bank(captions)
        if bank_digest(texts) != self.meta.get("captions_digest"):
            raise ImgsearchError(
                f"this index was made with the caption bank {self.meta['captions']!r}; "
                "use another --db for a different bank"
            )

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

    def tau(self, method: str = config.DEFAULT_METHOD) -> float:
        """The decision threshold recorded for ``method`` when this index was made."""
        _check_method(method)
        if method == "caption" and self.settings.center_collection and not self.store.count():
            return config.TAU_UNCENTERED[config.model_family(self.model_name)]
        return float(self.meta.get(f"tau.{method}", config.default_tau(self.model_name, method)))

    @property
    def model(self) -> Model:
        """The index's model, loaded on first use (a no-change re-index never needs it)."""
        if self._model is None:
            from imgsearch.models import load_model, pick_device

            self._model = load_model(self.model_name, pick_device(self.device))
        return self._model

    @property
    def bank(self) -> CaptionBank:
        if self._bank is None:
            texts, vectors = self.store.load_bank()
            self._bank = CaptionBank(texts, vectors)
        return self._bank

    # --- indexing -----------------------------------------------------------

    def add(
        self,
        batch_size: int = config.BATCH_SIZE,
        workers: int | None = None,
        progress: bool = False,
        on_skip: Callable[[Skipped], None] | None = None,
        files: Iterable[str | os.PathLike] | None = None,
        ray: str | None = None,
        ray_workers: int | None = None,
    ) -> IndexSummary:
        """Bring the index in line with its root folder: add, update, move and drop images.

        ``files`` limits the run to those files (absolute, or relative to the root): listed
        files are added, updated or dropped as usual, indexed files not listed stay as they
        are. ``ray`` runs the embedding on a Ray cluster (an address, or 'auto': the cluster
        this machine belongs to, else a local one) with ``ray_workers`` model workers
        (default: one per GPU, else one); the stored results are the same.
        """
        if batch_size < 1:
            raise ImgsearchError("--batch-size must be at least 1")
        if workers is not None and workers < 1:
            raise ImgsearchError("--workers must be at least 1")
        if ray is not None:
            from imgsearch.distributed import require_ray

            require_ray()  # before anything changes
            if workers is not None:
                raise ImgsearchError("--workers sets decode threads; with --ray use --ray-workers")
        start = time.perf_counter()
        if not self.root.is_dir():
            raise ImgsearchError(f"the indexed folder {self.root} is missing")
        only = None if files is None else self._listed(files)
        with self.store.writer():
            todo = plan(self.root, self.store, only)
            summary = IndexSummary(unchanged=todo.unchanged, moved=todo.moved)
            summary.skipped.extend(todo.known_bad)
            missing = [Skipped(p, "listed, but no image file is there") for p in todo.absent]
            for skip in todo.passed + missing:
                summary.skipped.append(skip)
                if on_skip is not None:
                    on_skip(skip)
            self.store.update_files(todo.relocate)
            summary.removed = self.store.remove_ids(todo.remove)
            if todo.embed and ray is not None:
                from imgsearch.distributed import embed_files_ray

                stored, skipped = embed_files_ray(
                    ray,
                    self.root,
                    todo.embed,
                    self.model_name,
                    self._model.preprocess if self._model else lambda: self.model.preprocess,
                    self.bank,
                    self.settings,
                    self.store,
                    batch_size=batch_size,
                    workers=ray_workers,
                    device=self.device,
                    on_skip=on_skip,
                    progress=progress,
                    limits=self.limits,
                )
            elif todo.embed:
                stored, skipped = embed_files(
                    self.root,
                    todo.embed,
                    self.model,
                    self.bank,
                    self.settings,
                    self.store,
                    batch_size=batch_size,
                    workers=workers,
                    on_skip=on_skip,
                    progress=progress,
                    limits=self.limits,
                )
            if todo.embed:
                summary.skipped.extend(skipped)
                updated = sum(1 for f in todo.embed if f.path in todo.changed)
                bad_changed = sum(1 for s in skipped if s.path in todo.changed)
                summary.updated = updated - bad_changed
                summary.added = stored - summary.updated
                # A changed file that no longer decodes keeps no stale vectors.
                stale = [p for p in (s.path for s in skipped) if p in todo.changed]
                states = self.store.file_states()
                self.store.remove_ids(states[p].id for p in stale if p in states)
                summary.removed += len(stale)
            keep = {s.path for s in summary.skipped} - set(todo.absent)
            if only is not None:  # failures of files not listed are not this run's to forget
                keep.update(p for p in self.store.skipped_files() if p not in only)
            self.store.forget_skipped(keep)
        self._vectors.clear()
        if (summary.added or summary.updated or summary.moved or summary.removed) and (
            self.store.count()
        ):
            self._vector_index(config.DEFAULT_METHOD)  # built now, so the first query is quick
        summary.seconds = time.perf_counter() - start
        return summary

    def remove(self, path: str | os.PathLike) -> int:
        """Drop a file or a folder from the index (the files themselves are untouched)."""
        relative = self._relative(Path(path), must_exist=False)
        if relative is None:
            raise ImgsearchError(f"{path} is not inside the indexed folder {self.root}")
        with self.store.writer():
            removed = self.store.remove_ids(self.store.ids_under(relative))
        if not removed:
            raise ImgsearchError(f"{path} is not in the index")
        self._vectors.clear()
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
            tau={m: self.tau(m) for m in config.METHODS},
        )

    def captions(self, image: ImageInput) -> list[Caption]:
        """The image's top-N captions with match scores: what its similarity rests on."""
        return self.describe(image).captions(self.bank.texts)

    def query(
        self,
        images: ImageInput | Sequence[ImageInput],
        k: int = config.DEFAULT_K,
        under: str | os.PathLike | None = None,
        explain: bool = False,
        method: str = config.DEFAULT_METHOD,
    ) -> list[Hit]:
        """Rank the collection by similarity to one image (or the average of several)."""
        _check_method(method, config.VECTOR_METHODS)
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        if not images:
            raise ImgsearchError("no query image given")
        described = [self.describe(image) for image in images]
        vector = np.mean([self._method_vector(d, method) for d in described], axis=0)
        exclude: set[int] = set()
        for d in described:
            if d.indexed_id is not None:
                exclude.add(d.indexed_id)
        query_captions = [c for d in described for c in d.caption_ids]
        return self._rank(vector, k, under, exclude, query_captions if explain else None, method)

    def query_text(
        self,
        text: str,
        k: int = config.DEFAULT_K,
        under: str | os.PathLike | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        """Rank by the cosine between the text and each image's caption vector."""
        if not text.strip():
            raise ImgsearchError("the query text is empty")
        text_vector = self.model.encode_texts([text])[0]
        vector = centered(text_vector, self.caption_mean())
        query_captions = None
        if explain:
            _, ids = self.bank.top(text_vector, self.top_n)
            query_captions = ids[0].tolist()
        return self._rank(vector, k, under, set(), query_captions, "caption")

    def compare(
        self,
        a: ImageInput,
        b: ImageInput,
        methods: Sequence[str] = config.METHODS,
        tau: float | None = None,
    ) -> Comparison:
        """One pair under every scoring method, the verdict at each method's tau, and the
        captions the two images share. ``tau`` overrides the default method's threshold."""
        tau = check_score(tau)
        for method in methods:
            _check_method(method)
        first, second = self.describe(a), self.describe(b)
        scores: dict[str, float] = {}
        for method in methods:
            if method in config.PIXEL_METHODS:
                from imgsearch import baselines

                measure = getattr(baselines, method)
                scores[method] = float(measure(first.image(), second.image()))
            else:
                va = self._method_vector(first, method)
                vb = self._method_vector(second, method)
                scores[method] = float(va @ vb)
        taus = {m: self.tau(m) for m in methods}
        if tau is not None and config.DEFAULT_METHOD in taus:
            taus[config.DEFAULT_METHOD] = tau
        texts = self.bank.texts
        theirs = set(second.caption_ids)
        shared_ids = [c for c in first.caption_ids if c in theirs]
        return Comparison(
            a=first.label,
            b=second.label,
            scores=scores,
            tau=taus,
            similar={m: scores[m] >= taus[m] for m in methods},
            shared=[texts[c] for c in shared_ids],
            captions_a=first.captions(texts),
            captions_b=second.captions(texts),
        )

    def evaluate(
        self,
        labels: dict[str, str],
        pairs: list[tuple[str, str, bool]] | None = None,
        methods: Sequence[str] = config.METHODS,
        tau: float | None = None,
    ) -> Evaluation:
        """Leave-one-out retrieval and pair decisions over the labeled images, per method."""
        from imgsearch.evaluate import evaluate_index

        return evaluate_index(self, labels, pairs, methods, check_score(tau))

    def method_vectors(self, method: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Every image's (id, path, vector) for a vector method: inner products are its scores."""
        _check_method(method, config.VECTOR_METHODS)
        column = "image_vector" if method == "image" else "caption_vector"
        ids, paths, stored = self.store.vectors(column)
        if not len(ids):
            raise ImgsearchError(f"the index at {self.store.name} has no images yet")
        hybrid_images = lambda: self.store.vectors("image_vector")[2]  # noqa: E731
        return ids, paths, self._from_stored(method, ids, stored, hybrid_images)

    def _method_chunks(self, method: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``method_vectors`` a page of images at a time, ids and vectors without paths: for
        a search index over a collection too large to hold in memory."""
        columns = {"image": ["image_vector"], "hybrid": ["caption_vector", "image_vector"]}
        for ids, stored in self.store.vector_chunks(columns.get(method, ["caption_vector"])):
            yield ids, self._from_stored(method, ids, stored[0], lambda s=stored: s[-1])

    def _from_stored(
        self,
        method: str,
        ids: np.ndarray,
        stored: np.ndarray,
        images: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """A method's vectors from the stored column it starts from (image vectors for
        'image', caption vectors otherwise); ``images`` gives the ones the hybrid adds."""
        if method == "image":
            return stored
        if method == "caption_avg":
            caption_ids, caption_scores = self.store.caption_lists(ids)
            return self.bank.combine(caption_ids, caption_scores, PAPER)
        captions = centered(stored, self.caption_mean())
        if method == "caption":
            return captions
        return hybrid_vectors(captions, centered(images(), self.image_mean()), self.hybrid_alpha)

    def graph_tau(self) -> float:
        return float(self.meta.get("tau.graph", config.default_graph_tau(self.model_name)))

    def caption_mean(self) -> np.ndarray | None:
        """The collection's mean caption vector, which caption scores are centred on: None
        when the index's settings don't centre; zero while it has no images (the score is
        then the plain cosine, judged by its own tau)."""
        if not self.settings.center_collection:
            return None
        return self._means()["caption"]

    def image_mean(self) -> np.ndarray:
        """The collection's mean image vector: the hybrid centres its image half on it too."""
        return self._means()["image"]

    def _method_vector(self, d: Description, method: str) -> np.ndarray:
        caption = centered(d.caption_vector, self.caption_mean())
        if method == "caption":
            return caption
        if method == "image":
            return d.image_vector
        if method == "hybrid":
            image = centered(d.image_vector, self.image_mean())
            return hybrid_vectors(caption, image, self.hybrid_alpha)
        return self.bank.combine(np.array(d.caption_ids), np.array(d.caption_scores), PAPER)[0]

    # --- relations between images -------------------------------------------

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
        tau = check_score(tau)
        if k is not None and k < 1:
            raise ImgsearchError("--k must be at least 1")
        if method is None:
            method = config.GRAPH_METHOD
            if tau is None:
                tau = self.graph_tau()
        _check_method(method, config.VECTOR_METHODS)
        tau = self.tau(method) if tau is None else tau
        ids, paths, vectors = self.method_vectors(method)
        edges = relations.graph_edges(vectors, tau, k, mutual and k is not None)
        groups = relations.components(len(ids), edges)
        nodes = [str(self.root / p) for p in paths]
        return Graph(nodes, edges, groups, method, tau, k, mutual, ids)

    def clusters(
        self,
        k: int | None = None,
        tau: float | None = None,
        method: str = config.DEFAULT_METHOD,
    ) -> list[Cluster]:
        """Groups of images, each named by the captions most common among its members.

        With ``k``: k-means on the method's vectors (default: config.CLUSTERS_K). With
        ``tau``: the connected components of the relationship graph at tau (see ``graph``;
        an image with no edge is a cluster of one). Every image is in exactly one cluster.
        """
        tau = check_score(tau)
        if k is not None and tau is not None:
            raise ImgsearchError("give --k or --tau, not both")
        _check_method(method, config.VECTOR_METHODS)
        if tau is not None:
            graph = self.graph(tau=tau, method=method)
            groups, ids = graph.groups, graph.ids
        else:
            k = config.CLUSTERS_K if k is None else k
            if k < 1:
                raise ImgsearchError("--k must be at least 1")
            ids, _, vectors = self.method_vectors(method)
            groups = relations.kmeans_clusters(vectors, k)
        caption_ids, caption_scores = self.store.caption_lists(ids)
        named = relations.name_clusters(
            groups, caption_ids.tolist(), self.bank.texts, member_scores=caption_scores.tolist()
        )
        paths = self.store.paths(ids)
        return [
            Cluster(c.name, c.captions, [str(self.root / paths[int(ids[m])]) for m in c.members])
            for c in named
        ]

    def duplicates(self, threshold: float | None = None) -> list[Duplicates]:
        """Near-duplicate groups (resized, re-encoded, cropped, mirrored copies) by image
        vectors, the one to keep (most pixels) first. Nothing on disk is touched."""
        threshold = check_score(threshold, "threshold", 0.0, 1.0, low_open=True)
        if threshold is None:
            threshold = config.duplicate_threshold(self.model_name)
        ids, paths, vectors = self.store.vectors("image_vector")
        sizes = self.store.sizes(ids)
        found = relations.duplicate_groups(vectors, threshold, sizes)
        return [
            Duplicates(
                str(self.root / paths[g.keep]),
                [str(self.root / paths[o]) for o in g.others],
                g.score,
            )
            for g in found
        ]

    def move_duplicates(self, groups: list[Duplicates], folder: str | os.PathLike) -> list[Moved]:
        """Move every group's ``others`` into ``folder`` (keeping their relative paths),
        never overwriting a file, then bring the index up to date (moves need no model)."""
        target = Path(folder).expanduser().resolve()
        moved = []
        for group in groups:
            for other in group.others:
                source = Path(other)
                if not source.is_file():
                    continue
                destination = _free_path(target / source.relative_to(self.root))
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(source, destination)
                moved.append(Moved(str(source), str(destination)))
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
        _check_method(score, config.VECTOR_METHODS)
        if method not in (*relations.SET_METHODS, "mean"):
            raise ImgsearchError(
                f"unknown set method {method!r}: use {', '.join(relations.SET_METHODS)} or mean"
            )
        if k < 1:
            raise ImgsearchError("-k must be at least 1")
        min_pair = check_score(min_pair, "min-pair")
        item = self._relative(Path(query))
        if item is None or not Path(query).is_dir() or "/" in item or not item:
            raise ImgsearchError(f"{query} is not a folder directly inside {self.root}")
        ids, paths, vectors = self.method_vectors(score)
        items: dict[str, list[int]] = {}
        for row, path in enumerate(paths):
            if "/" in path:
                items.setdefault(path.split("/", 1)[0], []).append(row)
        if item not in items:
            raise ImgsearchError(f"no indexed images in {query}")
        mine = vectors[items.pop(item)]
        hits = []
        for name, rows in items.items():
            theirs = vectors[rows]
            try:
                if method == "mean":
                    value = relations.mean_set_similarity(mine, theirs)
                else:
                    value = relations.set_similarity(mine @ theirs.T, method, min_pair, top_m).score
            except ValueError as exc:
                raise ImgsearchError(f"{name}: {exc}") from None
            hits.append(SetHit(str(self.root / name), float(value)))
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    # --- for viewers: the web UI, HTML reports, the map -----------------------

    def refresh(self) -> bool:
        """Forget what this object caches when another process changed the index since the
        last call: a long-lived reader (``imgsearch serve``) calls it before each request."""
        current = self.store.generation()
        changed = self._vectors.get("generation", current) != current
        if changed:
            self._vectors.clear()
        self._vectors["generation"] = current
        return changed

    def image_file(self, image: int | str | os.PathLike) -> IndexedFile | None:
        """An indexed image by id or path; None for anything not in the index, or no longer
        a regular file inside the indexed folder. The web UI serves only files found here."""
        if "files" not in self._vectors:
            files = self.store.file_states()
            self._vectors["files"] = files
            self._vectors["file_ids"] = {state.id: path for path, state in files.items()}
        if isinstance(image, (int, np.integer)):
            relative = self._vectors["file_ids"].get(int(image))
        else:
            relative = self._relative(Path(image), must_exist=False)
        state = self._vectors["files"].get(relative) if relative is not None else None
        if state is None:
            return None
        path = self.root / relative
        try:
            if not (path.is_file() and path.resolve(strict=True).is_relative_to(self.root)):
                return None
        except OSError:
            return None
        return IndexedFile(state.id, path, state.hash, state.size, state.mtime_ns)

    def thumbnail(
        self, image: int | str | os.PathLike, size: int = config.THUMBNAIL_SIZE
    ) -> bytes | None:
        """A JPEG of an indexed image, longest side ``size``, cached in the user cache folder
        by content hash and size; None when it is not in the index or no longer decodes."""
        from imgsearch.report import cached_thumbnail

        found = self.image_file(image)
        return cached_thumbnail(found, size) if found is not None else None

    def layout(
        self, projection: str = "auto", k: int | None = None, method: str = config.DEFAULT_METHOD
    ) -> Layout:
        """The collection in two dimensions (t-SNE; PCA for large collections or on request),
        each image with its k-means cluster (``k`` clusters, by default fewer for a small
        collection: ``config.viewer_clusters``): what ``imgsearch map`` draws."""
        from imgsearch.report import project

        ids, paths, vectors = self.method_vectors(method)
        xy, used = project(vectors, projection)
        k = config.viewer_clusters(len(ids)) if k is None else k
        clusters = self.clusters(k=k, method=method)
        row = {str(self.root / p): n for n, p in enumerate(paths)}
        labels = np.zeros(len(ids), dtype=np.int64)
        for number, cluster in enumerate(clusters):
            labels[[row[m] for m in cluster.members]] = number
        return Layout([str(self.root / p) for p in paths], ids, xy, labels, clusters, used)

    def _rank(
        self,
        vector: np.ndarray,
        k: int,
        under: str | os.PathLike | None,
        exclude: set[int],
        query_captions: list[int] | None,
        method: str,
    ) -> list[Hit]:
        if k < 1:
            raise ImgsearchError("-k must be at least 1")
        allowed = None
        if under is not None:
            relative = self._relative(Path(under), must_exist=False)
            if relative is None:
                raise ImgsearchError(f"{under} is not inside the indexed folder {self.root}")
            allowed = self.store.ids_under(relative)
            if not allowed:
                raise ImgsearchError(f"nothing is indexed under {under}")
        ranked = self._vector_index(method).search(vector, k, allowed, exclude)
        paths = self.store.paths(i for i, _ in ranked)
        hits = [Hit(str(self.root / paths[i]), score, id=int(i)) for i, score in ranked]
        if query_captions is not None and ranked:
            order = {c: n for n, c in enumerate(dict.fromkeys(query_captions))}
            hit_captions = self.store.captions_of(i for i, _ in ranked)
            for hit, (image_id, _) in zip(hits, ranked):
                shared = sorted(
                    {c for c, _ in hit_captions[image_id]} & order.keys(), key=order.__getitem__
                )
                hit.shared = [self.bank.texts[c] for c in shared]
        return hits

    def _vector_index(self, method: str) -> VectorIndex:
        """The method's search index: loaded from beside the database when it is current,
        else built (exact, or IVF for large collections) and saved for the next process."""
        if method not in self._vectors:
            # The generation is read before the vectors: a change in between makes the
            # saved file look stale (rebuilt next time), never current with old contents.
            stamp = json.dumps(
                [self.store.generation(), method, self.meta["caption_settings"], self.hybrid_alpha]
            )
            path = self._derived_path(f"{method}.vix")
            memory = self.index_memory
            try:
                index = VectorIndex.load(path)
            except (OSError, ValueError):
                index = None
            if index is None or index.stamp != stamp or not index.suits(memory):
                index = self._build_vector_index(method, stamp, memory, path.parent)
                with contextlib.suppress(OSError):  # a read-only index still answers
                    index.save(path)
            self._vectors[method] = index
        return self._vectors[method]

    def _build_vector_index(
        self, method: str, stamp: str, memory: int, folder: Path
    ) -> VectorIndex:
        """Exact or IVF from the vectors in memory; where they would exceed the memory
        budget, the compressed kind, read a page at a time, its vectors file in ``folder``."""
        count = self.store.count()
        if not count or not needs_compression(count, self._method_dim(method), memory):
            ids, _, vectors = self.method_vectors(method)
            return VectorIndex(ids, vectors, stamp=stamp, memory=memory)
        return VectorIndex.from_chunks(
            self._method_chunks(method),
            memory=memory,
            stamp=stamp,
            workdir=folder if os.access(folder, os.W_OK) else None,
        )

    def _method_dim(self, method: str) -> int:
        """How many dimensions a method's vectors have, without reading them all."""
        caption = self.bank.vectors.shape[1]
        if method in ("caption", "caption_avg"):
            return caption
        _, (image,) = next(self.store.vector_chunks(["image_vector"], size=1))
        return image.shape[1] + (caption if method == "hybrid" else 0)

    @property
    def limits(self) -> Limits:
        """What one image may cost (file size, decoded pixels, aspect ratio): recorded by
        ``set_limits`` (``imgsearch index --max-pixels ...``), for indexing, queries and
        uploads alike; the defaults where none were."""
        default = Limits()
        return Limits(
            int(self.meta.get("max_pixels", default.max_pixels)),
            float(self.meta.get("max_aspect", default.max_aspect)),
            int(self.meta.get("max_file_size", default.max_file_size)),
        )

    def set_limits(
        self,
        max_pixels: int | None = None,
        max_aspect: float | None = None,
        max_file_size: int | None = None,
    ) -> Limits:
        """Record new limits (None keeps one as it is). Files skipped for a limit before are
        tried again by the next ``add``."""
        current = self.limits
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
            self.store.set_meta(values)
            self.meta.update(values)
            self.store.forget_skipped_reason(OVER_LIMIT)
        return wanted

    @property
    def index_memory(self) -> int:
        """The memory budget of the search index, in bytes: where the flat vectors would
        exceed it, the compressed kind is built (see ``set_index_memory``)."""
        return int(self.meta.get("index_memory", config.INDEX_MEMORY))

    def set_index_memory(self, size: int | str) -> int:
        """Record a new memory budget for the search index ("4GB", "512MB" or bytes); later
        queries build to it, and ``search_index`` rebuilds now. Returns it in bytes."""
        value = parse_size(size) if isinstance(size, str) else int(size)
        if value < 1:
            raise ImgsearchError(f"the index memory must be positive, not {size!r}")
        if value != self.index_memory:
            self.store.set_meta({"index_memory": str(value)})
            self.meta["index_memory"] = str(value)
            self._vectors.clear()
        return value

    def search_index(self, method: str = config.DEFAULT_METHOD) -> VectorIndex:
        """The method's search index, loaded or (stale, damaged or built to another memory
        budget) rebuilt and saved: what queries use."""
        _check_method(method, config.VECTOR_METHODS)
        if not self.store.count():
            raise ImgsearchError(f"the index at {self.store.name} has no images yet")
        return self._vector_index(method)

    def _derived_path(self, name: str) -> Path:
        """Where a file made from the database is kept: beside a SQLite file; for a URL, in
        the cache folder, one subfolder per database (a hash of the URL, password masked),
        so every machine keeps its own copy, stamped with the generation like any other."""
        if self.store.path is not None:
            return self.store.path.with_name(f"{self.store.path.name}.{name}")
        key = hashlib.sha256(self.store.name.encode()).hexdigest()[:16]
        folder = config.cache_dir() / "databases" / key
        with contextlib.suppress(OSError):  # unwritable: the file is simply not kept
            folder.mkdir(parents=True, exist_ok=True)
        return folder / f"index.{name}"

    def _means(self) -> dict[str, np.ndarray]:
        """The collection's mean caption and image vectors, kept beside the database like
        the search indexes, so a query never has to read every vector."""
        if "means" not in self._vectors:
            stamp = self.store.generation()
            path = self._derived_path("means.npz")
            means = None
            try:
                with np.load(path) as saved:
                    if str(saved["stamp"]) == stamp:
                        means = {"caption": saved["caption"], "image": saved["image"]}
            except (OSError, ValueError, KeyError):
                pass
            if means is None:
                means = {}
                for name in ("caption", "image"):
                    # A page at a time, summed row by row: numpy's own order for a column
                    # mean, so the same float32 result without holding every vector.
                    total, count = None, 0
                    for ids, (stored,) in self.store.vector_chunks([f"{name}_vector"]):
                        rows = stored if total is None else np.vstack([total[None], stored])
                        total, count = np.add.reduce(rows, axis=0), count + len(ids)
                    dim = len(self.bank.vectors[0]) if name == "caption" else 1
                    means[name] = total / np.float32(count) if count else np.zeros(dim)
                    means[name] = means[name].astype(np.float32)
                with contextlib.suppress(OSError):
                    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
                    np.savez(temporary, stamp=np.array(stamp), **means)
                    os.replace(temporary, path)
            self._vectors["means"] = means
        return self._vectors["means"]

    def describe(self, image: ImageInput) -> Description:
        """Everything the scoring methods need of one image.

        An indexed, unchanged file is read from the index: no model needed.
        """
        path = None
        if not isinstance(image, Image.Image):
            path = Path(image).expanduser()
            if not path.exists():
                raise ImgsearchError(f"{image}: no such file")
            if path.is_dir():
                raise ImgsearchError(f"{image} is a folder, not an image")
            relative = self._relative(path)
            if relative is not None:
                record = self.store.get(path=relative)
                stat = path.stat()
                if record and (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                    return Description(
                        record.caption_ids,
                        record.caption_scores,
                        record.caption_vector,
                        record.image_vector,
                        str(path.resolve()),
                        path,
                        record.id,
                    )
            try:
                image = decode(path, limits=self.limits).image
            except BadImage as exc:
                raise ImgsearchError(f"{image}: {exc}") from None
        vectors = self.model.encode_images(self.model.preprocess(image)[None])
        found = self.bank.describe(vectors.text_space, self.settings)
        return Description(
            found.ids[0].tolist(),
            found.scores[0].tolist(),
            found.vectors[0],
            vectors.image[0],
            str(path.resolve()) if path else "<image>",
            path,
            None,
            image,
        )

    def _listed(self, files: Iterable[str | os.PathLike]) -> set[str]:
        """Listed files as paths relative to the root; any outside it stops the run."""
        only: set[str] = set()
        outside: list[str] = []
        for entry in files:
            path = Path(entry).expanduser()
            # A name that is not UTF-8 goes on: the run skips it with a line of its own.
            relative = self._relative(self.root / path, must_exist=False, check_name=False)
            if relative:
                only.add(relative)
            else:
                outside.append(str(entry))
        if outside:
            raise ImgsearchError(
                f"{len(outside)} listed file(s) are not inside the indexed folder {self.root}, "
                f"e.g. {outside[0]}"
            )
        return only

    def _relative(self, path: Path, must_exist: bool = True, check_name: bool = True) -> str | None:
        """``path`` relative to the root in POSIX form, or None when it lies outside.
        A name that is not valid UTF-8 is one clear error (``check_name``)."""
        if check_name and not valid_name(str(path)):  # never indexed, and JSON cannot name it
            raise ImgsearchError(
                f"{shown(str(path))}: the file name is not valid UTF-8; rename it to use it"
            )
        if must_exist and not path.exists():
            return None
        try:
            relative = path.expanduser().resolve().relative_to(self.root)
        except ValueError:
            return None
        return "" if relative == Path(".") else relative.as_posix()


@dataclass
class Graph:
    """The relationship graph: nodes (absolute paths), edges (rows into ``nodes``, source
    < target), and connected components as groups, largest first."""

    nodes: list[str]
    edges: list[relations.Edge]
    groups: list[list[int]]
    method: str
    tau: float
    k: int | None
    mutual: bool
    ids: np.ndarray  # database ids, row for row with ``nodes``

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "tau": self.tau,
            "k": self.k,
            "mutual": self.mutual,
            **relations.graph_dict(self.nodes, self.edges, self.groups),
        }


@dataclass
class IndexedFile:
    """An indexed image file: its id in the index, where it is, and its content hash."""

    id: int
    path: Path
    hash: str
    size: int
    mtime_ns: int


@dataclass
class Layout:
    """The collection in two dimensions: ``xy`` (n, 2) in [0, 1], row for row with ``paths``
    and ``ids``; ``cluster`` indexes ``clusters``; ``projection`` is 'tsne' or 'pca'."""

    paths: list[str]
    ids: np.ndarray
    xy: np.ndarray
    cluster: np.ndarray
    clusters: list[Cluster]
    projection: str


@dataclass
class Cluster:
    """A named group of images: ``name`` from its most shared ``captions``."""

    name: str
    captions: list[str]
    members: list[str]


@dataclass
class Duplicates:
    """Copies of one photo: ``keep`` (the most pixels) and the ``others``; ``score`` is the
    lowest image cosine between ``keep`` and an other."""

    keep: str
    others: list[str]
    score: float


@dataclass
class Moved:
    source: str
    destination: str


@dataclass
class SetHit:
    """An item (a folder of images) and its set similarity to the query item."""

    item: str
    score: float


@dataclass
class Description:
    """One image as the scoring methods see it."""

    caption_ids: list[int]
    caption_scores: list[float]
    caption_vector: np.ndarray
    image_vector: np.ndarray
    label: str  # its absolute path, or "<image>"
    path: Path | None = None
    indexed_id: int | None = None
    pixels: Image.Image | None = None

    def captions(self, texts: list[str]) -> list[Caption]:
        return [Caption(texts[i], float(s)) for i, s in zip(self.caption_ids, self.caption_scores)]

    def image(self) -> Image.Image:
        """The decoded image, for the pixel-based baselines."""
        if self.pixels is None:
            assert self.path is not None
            try:
                self.pixels = decode(self.path).image
            except BadImage as exc:
                raise ImgsearchError(f"{self.path}: {exc}") from None
        return self.pixels


@dataclass
class Comparison:
    """``imgsearch compare``: one pair under every method."""

    a: str
    b: str
    scores: dict[str, float]
    tau: dict[str, float]
    similar: dict[str, bool]
    shared: list[str]
    captions_a: list[Caption]
    captions_b: list[Caption]

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "methods": {
                m: {"score": round(s, 6), "tau": self.tau[m], "similar": self.similar[m]}
                for m, s in self.scores.items()
            },
            "shared": self.shared,
            "captions_a": [asdict(c) for c in self.captions_a],
            "captions_b": [asdict(c) for c in self.captions_b],
        }


def hybrid_vectors(captions: np.ndarray, images: np.ndarray, alpha: float) -> np.ndarray:
    """Rows whose inner products are alpha * caption score + (1 - alpha) * image score."""
    parts = [np.sqrt(alpha) * captions, np.sqrt(1 - alpha) * images]
    return np.concatenate(parts, axis=-1).astype(np.float32)


def _free_path(path: Path) -> Path:
    """``path``, or ``name-1.ext``, ``name-2.ext``... when it is taken: never overwrite."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "4GB", "512MB", "1.5G", "64KiB" or a plain count. Units are binary
    (1 GB = 2^30 bytes), as memory is counted; a bad value is one clear error."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", text, re.I)
    value = float(match[1]) * _SIZE_UNITS[match[2].lower()] if match else 0
    if not match or value < 1 or (not match[2] and not value.is_integer()):
        raise ImgsearchError(f"bad memory size {text!r}: give a positive size such as 4GB or 512MB")
    return int(value)


def _db_target(db: str | os.PathLike) -> str | Path:
    """A database URL as given, or a SQLite file path."""
    return str(db) if is_url(db) else Path(db).expanduser()


def _stored_root(store: Store, root: Path) -> str:
    """How an index records its root folder: relative to a SQLite file, so a library moved
    together with its index keeps working; absolute for a URL, which has no place on disk."""
    if store.path is None:
        return str(root)
    return os.path.relpath(root, store.path.parent.resolve())


def check_score(
    value: float | None,
    name: str = "tau",
    low: float = -1.0,
    high: float = 1.0,
    low_open: bool = False,
) -> float | None:
    """A score threshold (tau, min-pair, the duplicates threshold) as a float, or one clear
    ImgsearchError: a finite number from ``low`` to ``high`` (above ``low`` with
    ``low_open``). Scores are cosines, and centred ones are negative for unrelated photos;
    NaN would compare false with everything, inf link nothing. None passes as None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    above = number > low if low_open else number >= low
    if not (math.isfinite(number) and above and number <= high):
        span = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise ImgsearchError(f"{name} must be a finite number {span}, not {value}".lstrip())
    return number


def _check_method(method: str, allowed: Sequence[str] = config.METHODS) -> None:
    if method not in allowed:
        raise ImgsearchError(f"unknown method {method!r}: use one of {', '.join(allowed)}")


def evaluate_folder(
    folder: str | os.PathLike,
    db: str | os.PathLike | None = None,
    model: str | None = None,
    device: str | None = None,
    methods: Sequence[str] = config.METHODS,
    tau: float | None = None,
    say: Callable[[str], None] | None = None,
    progress: bool = False,
    captions: str | os.PathLike | None = None,
) -> Evaluation:
    """Index a labeled folder (incrementally), then measure every scoring method on it."""
    check_score(tau)
    labels = read_labels(Path(folder))
    pairs = read_pairs(Path(folder))
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
        return report


def compare_images(
    a: ImageInput,
    b: ImageInput,
    db: str | os.PathLike | None = None,
    model: str | None = None,
    device: str | None = None,
    methods: Sequence[str] = config.METHODS,
    tau: float | None = None,
    say: Callable[[str], None] | None = None,
) -> Comparison:
    """Compare two images with an index's model and bank; with no index, a throwaway one."""
    check_score(tau)
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
