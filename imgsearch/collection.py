"""Relations among the indexed images as a whole: the relationship graph, named clusters,
near-duplicates and sets of images, in paths the user knows (``relations`` does the arrays)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imgsearch import config, relations, scoring
from imgsearch.duplicates import Finder
from imgsearch.errors import ImgsearchError
from imgsearch.files import DEFAULT_LIMITS, Limits, free_path, relative_path
from imgsearch.metrics import MethodInput, evaluate_methods
from imgsearch.projections import project
from imgsearch.results import Cluster, Duplicates, Evaluation, Graph, Layout, Moved, SetHit
from imgsearch.storage import Store
from imgsearch.vectors import Vectors


class MoveStopped(ImgsearchError):
    """Moving copies stopped half-way: ``moved`` says what was moved before it."""

    def __init__(self, message: str, moved: list[Moved]):
        super().__init__(message)
        self.moved = moved


class Collection:
    """One index's images seen together. ``tau(method)`` gives a method's recorded
    threshold; ``graph_tau`` and ``duplicate_threshold`` the graph's and the copies' own."""

    def __init__(
        self,
        root: Path,
        store: Store,
        vectors: Vectors,
        tau: Callable[[str], float],
        graph_tau: float,
        duplicate_threshold: float,
        scope: list[int] | None = None,
    ):
        self.root = root
        self.store = store
        self.vectors = vectors
        self.tau = tau
        self.graph_tau = graph_tau
        self.duplicate_threshold = duplicate_threshold
        self.scope = scope  # the ids the date, camera and folder filters let through

    def _of(self, method: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """A method's (ids, paths, vectors), only of the photos in scope."""
        ids, paths, vectors = self.vectors.of(method)
        if self.scope is None:
            return ids, paths, vectors
        keep = np.flatnonzero(np.isin(ids, np.asarray(self.scope, dtype=ids.dtype)))
        return ids[keep], [paths[i] for i in keep], vectors[keep]

    def graph(self, tau: float | None, method: str | None, k: int | None, mutual: bool) -> Graph:
        tau = scoring.check_score(tau)
        if k is not None and k < 1:
            raise ImgsearchError("--k must be at least 1")
        if method is None:
            method = config.GRAPH_METHOD
            if tau is None:
                tau = self.graph_tau
        scoring.get(method, ranking=True)
        tau = self.tau(method) if tau is None else tau
        ids, paths, vectors = self._of(method)
        edges = relations.graph_edges(vectors, tau, k, mutual and k is not None)
        groups = relations.components(len(ids), edges)
        nodes = [str(self.root / p) for p in paths]
        return Graph(nodes, edges, groups, method, tau, k, mutual, ids)

    def clusters(self, k: int | None, tau: float | None, method: str) -> list[Cluster]:
        tau = scoring.check_score(tau)
        if k is not None and tau is not None:
            raise ImgsearchError("give --k or --tau, not both")
        scoring.get(method, ranking=True)
        if tau is not None:
            graph = self.graph(tau, method, config.GRAPH_K, config.GRAPH_MUTUAL)
            groups, ids = graph.groups, graph.ids
        else:
            k = config.CLUSTERS_K if k is None else k
            if k < 1:
                raise ImgsearchError("--k must be at least 1")
            ids, _, vectors = self._of(method)
            groups = relations.kmeans_clusters(vectors, k)
        caption_ids, caption_scores = self.store.caption_lists(ids)
        texts = self.vectors.context.bank.texts
        named = relations.name_clusters(
            groups, caption_ids.tolist(), texts, member_scores=caption_scores.tolist()
        )
        paths = self.store.paths(ids)
        return [
            Cluster(c.name, c.captions, [str(self.root / paths[int(ids[m])]) for m in c.members])
            for c in named
        ]

    def duplicates(
        self,
        threshold: float | None,
        limits: Limits = DEFAULT_LIMITS,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Duplicates]:
        threshold = scoring.check_score(threshold, "threshold", 0.0, 1.0, low_open=True)
        threshold = self.duplicate_threshold if threshold is None else threshold
        similar = self.tau("image")
        finder = Finder(
            self.root, self.store, threshold, similar, limits=limits, progress=progress,
            scope=self.scope,
        )  # fmt: skip
        return finder.groups()

    def move_duplicates(
        self, groups: list[Duplicates], folder: str | os.PathLike, include_similar: bool = False
    ) -> list[Moved]:
        """Move the members of ``exact`` and ``copy`` groups but the one to keep (and of
        ``similar`` groups too with ``include_similar``) into ``folder`` keeping their
        relative paths, never overwriting a file. The caller brings the index up to date."""
        target = Path(folder).expanduser().resolve()
        moved: list[Moved] = []
        for source, destination in self.move_plan(groups, target, include_similar):
            try:
                destination = free_path(destination)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(source, destination)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                where = exc.filename or destination
                raise MoveStopped(
                    f"stopped moving copies: cannot move {source} to {destination} "
                    f"({where}: {reason}); {len(moved)} moved before it, the index follows",
                    moved,
                ) from None
            moved.append(Moved(str(source), str(destination)))
        return moved

    def move_plan(
        self, groups: list[Duplicates], folder: str | os.PathLike, include_similar: bool = False
    ) -> list[tuple[Path, Path]]:
        """(file, where it would go) for every member a move would take: what to show first."""
        target = Path(folder).expanduser().resolve()
        plan = []
        for group in groups:
            if group.tier == "similar" and not include_similar:
                continue
            for other in group.others:
                source = Path(other.path)
                if source.is_file():
                    plan.append((source, target / source.relative_to(self.root)))
        return plan

    def sets(
        self,
        query: str | os.PathLike,
        k: int,
        method: str,
        min_pair: float | None,
        top_m: int | None,
        score: str,
    ) -> list[SetHit]:
        scoring.get(score, ranking=True)
        if method not in (*relations.SET_METHODS, "mean"):
            raise ImgsearchError(
                f"unknown set method {method!r}: use {', '.join(relations.SET_METHODS)} or mean"
            )
        if k < 1:
            raise ImgsearchError("-k must be at least 1")
        min_pair = scoring.check_score(min_pair, "min-pair")
        item = relative_path(self.root, Path(query))
        if item is None or not Path(query).is_dir() or "/" in item or not item:
            raise ImgsearchError(f"{query} is not a folder directly inside {self.root}")
        _, paths, vectors = self.vectors.of(score)
        try:
            ranked = relations.rank_items(vectors, paths, item, method, min_pair, top_m)
        except LookupError:
            raise ImgsearchError(f"no indexed images in {query}") from None
        except ValueError as exc:
            raise ImgsearchError(str(exc)) from None
        return [SetHit(str(self.root / name), value) for name, value in ranked[:k]]

    def layout(self, projection: str, k: int | None, method: str) -> Layout:
        ids, paths, vectors = self._of(method)
        xy, used = project(vectors, projection)
        k = config.viewer_clusters(len(ids)) if k is None else k
        clusters = self.clusters(k, None, method)
        row = {str(self.root / p): n for n, p in enumerate(paths)}
        labels = np.zeros(len(ids), dtype=np.int64)
        for number, cluster in enumerate(clusters):
            labels[[row[m] for m in cluster.members]] = number
        return Layout([str(self.root / p) for p in paths], ids, xy, labels, clusters, used)

    def evaluate(
        self,
        labels: dict[str, str],
        pairs: list[tuple[str, str, bool]] | None,
        methods: Sequence[str] | None,
        tau: float | None,
    ) -> Evaluation:
        tau = scoring.check_score(tau)
        if methods is None:
            context = self.vectors.context
            methods = [m for m in scoring.names() if scoring.get(m).available(context)]
        states = self.store.file_states()
        paths = sorted(states, key=lambda p: states[p].id)  # rows in id order, as vectors come
        inputs: dict[str, MethodInput] = {}
        for name in methods:
            scorer = scoring.get(name)
            threshold = tau if tau is not None and name == config.DEFAULT_METHOD else None
            threshold = self.tau(name) if threshold is None else threshold
            if scorer.ranks:
                inputs[name] = (threshold, lambda n=name: self.vectors.of(n)[2], None)
            else:
                inputs[name] = (threshold, None, self._pixel_scores(scorer))
        return evaluate_methods(paths, labels, pairs, inputs)

    def _pixel_scores(
        self, scorer: scoring.Method
    ) -> Callable[[list[tuple[str, str]]], np.ndarray]:
        assert isinstance(scorer, scoring.PixelScore)
        return lambda pairs: scorer.pair_scores([(self.root / a, self.root / b) for a, b in pairs])
