"""The Python API: the single way in, for programs and for the command line alike."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from imgsearch import config
from imgsearch.captions import CaptionBank, bank_digest, read_bank
from imgsearch.errors import ImgsearchError
from imgsearch.evaluate import METHOD_COLUMNS, Evaluation, read_labels, retrieval_metrics
from imgsearch.files import BadImage, decode
from imgsearch.indexer import IndexSummary, Skipped, embed_files, plan
from imgsearch.search import Caption, Hit, VectorIndex
from imgsearch.storage import Store

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
    """An image index: one SQLite file, its root folder, its model and caption bank.

    >>> index = Index.create("photos")          # or Index.open() inside an indexed folder
    >>> index.add()                              # embeds new and changed photos
    >>> index.query("photos/cat.jpg", k=5)       # -> list[Hit]
    """

    def __init__(self, store: Store, device: str | None = None, model: Model | None = None):
        self.store = store
        self.device = device
        self._model = model
        self._bank: CaptionBank | None = None
        self._vectors: dict[str, VectorIndex] = {}
        self.meta = store.meta()
        if "model" not in self.meta:
            raise ImgsearchError(f"{store.path} is not a complete imgsearch index")
        self.root = (store.path.parent / self.meta["root"]).resolve()

    # --- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        db: str | os.PathLike | None = None,
        model: str | None = None,
        device: str | None = None,
    ) -> Index:
        """Open an existing index (``db``, or the one found from the current folder)."""
        path = Path(db).expanduser() if db else find_db()
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
        top_n: int = config.TOP_N,
        device: str | None = None,
        say: Callable[[str], None] | None = None,
    ) -> Index:
        """Open the index of ``root`` or make a new one; the model is loaded only for a new one."""
        root_path = Path(root).expanduser().resolve()
        if not root_path.is_dir():
            raise ImgsearchError(f"{root}: no such folder")
        path = Path(db).expanduser() if db else default_db(root_path)
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
        if top_n < 1:
            raise ImgsearchError("--top-n must be at least 1")
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
                "top_n": str(top_n),
                "root": os.path.relpath(root_path, path.parent.resolve()),
                "tau.caption": str(config.default_tau(loaded.name, "caption")),
                "tau.image": str(config.default_tau(loaded.name, "image")),
                "created": str(time.time()),
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
        relative = os.path.relpath(root, self.store.path.parent.resolve())
        self.store.set_meta({"root": relative})
        self.meta["root"] = relative
        self.root = root

    # --- properties -----------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.meta["model"]

    @property
    def top_n(self) -> int:
        return int(self.meta["top_n"])

    def tau(self, method: str = "caption") -> float:
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
    ) -> IndexSummary:
        """Bring the index in line with its root folder: add, update, move and drop images."""
        if batch_size < 1:
            raise ImgsearchError("--batch-size must be at least 1")
        if workers is not None and workers < 1:
            raise ImgsearchError("--workers must be at least 1")
        start = time.perf_counter()
        if not self.root.is_dir():
            raise ImgsearchError(f"the indexed folder {self.root} is missing")
        with self.store.writer():
            todo = plan(self.root, self.store)
            summary = IndexSummary(unchanged=todo.unchanged, moved=todo.moved)
            summary.skipped.extend(todo.known_bad)
            self.store.update_files(todo.relocate)
            summary.removed = self.store.remove_ids(todo.remove)
            if todo.embed:
                stored, skipped = embed_files(
                    self.root,
                    todo.embed,
                    self.model,
                    self.bank,
                    self.top_n,
                    self.store,
                    batch_size=batch_size,
                    workers=workers,
                    on_skip=on_skip,
                    progress=progress,
                )
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
            self.store.forget_skipped({s.path for s in summary.skipped})
        self._vectors.clear()
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

    def evaluate(self, labels: dict[str, str]) -> Evaluation:
        """Leave-one-out retrieval over the labeled images, for each scoring method."""
        report: Evaluation | None = None
        for method, column in METHOD_COLUMNS.items():
            _, paths, vectors = self.store.vectors(column)
            rows = [i for i, p in enumerate(paths) if p in labels]
            if len(rows) < 2:
                raise ImgsearchError("fewer than two labeled images are indexed")
            names = [labels[paths[i]] for i in rows]
            if report is None:
                report = Evaluation(images=len(rows), labels=len(set(names)))
            report.methods[method] = retrieval_metrics(vectors[rows], names)
        assert report is not None
        return report

    # --- reading ------------------------------------------------------------

    def status(self) -> Status:
        return Status(
            root=str(self.root),
            db=str(self.store.path.resolve()),
            model=self.model_name,
            captions=self.meta["captions"],
            caption_count=len(self.bank.texts),
            top_n=self.top_n,
            images=self.store.count(),
            size_bytes=self.store.size_on_disk(),
            tau={m: self.tau(m) for m in ("caption", "image")},
        )

    def captions(self, image: ImageInput) -> list[Caption]:
        """The image's top-N captions with match scores: what its similarity rests on."""
        ids, scores, _ = self._describe(image)
        texts = self.bank.texts
        return [Caption(texts[i], float(s)) for i, s in zip(ids, scores)]

    def query(
        self,
        images: ImageInput | Sequence[ImageInput],
        k: int = config.DEFAULT_K,
        under: str | os.PathLike | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        """Rank the collection by caption similarity to one image (or the average of several)."""
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        if not images:
            raise ImgsearchError("no query image given")
        described = [self._describe(image) for image in images]
        vector = np.mean([d[2] for d in described], axis=0)
        exclude = set()
        for image in images:
            if not isinstance(image, Image.Image):
                relative = self._relative(Path(image))
                if relative is not None:
                    exclude.update(self.store.ids_under(relative) if Path(image).is_file() else [])
        query_captions = [c for d in described for c in d[0]]
        return self._rank(vector, k, under, exclude, query_captions if explain else None)

    def query_text(
        self,
        text: str,
        k: int = config.DEFAULT_K,
        under: str | os.PathLike | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        """Rank by the mean cosine between the text and each image's captions."""
        if not text.strip():
            raise ImgsearchError("the query text is empty")
        vector = self.model.encode_texts([text])[0]
        query_captions = None
        if explain:
            _, ids = self.bank.top(vector, self.top_n)
            query_captions = ids[0].tolist()
        return self._rank(vector, k, under, set(), query_captions)

    def _rank(
        self,
        vector: np.ndarray,
        k: int,
        under: str | os.PathLike | None,
        exclude: set[int],
        query_captions: list[int] | None,
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
        ranked = self._vector_index("caption_vector").search(vector, k, allowed, exclude)
        paths = self.store.paths(i for i, _ in ranked)
        hits = [Hit(str(self.root / paths[i]), score) for i, score in ranked]
        if query_captions is not None and ranked:
            order = {c: n for n, c in enumerate(dict.fromkeys(query_captions))}
            hit_captions = self.store.captions_of(i for i, _ in ranked)
            for hit, (image_id, _) in zip(hits, ranked):
                shared = sorted(
                    {c for c, _ in hit_captions[image_id]} & order.keys(), key=order.__getitem__
                )
                hit.shared = [self.bank.texts[c] for c in shared]
        return hits

    def _vector_index(self, column: str) -> VectorIndex:
        if column not in self._vectors:
            ids, _, vectors = self.store.vectors(column)
            if not len(ids):
                raise ImgsearchError(f"the index at {self.store.path} has no images yet")
            self._vectors[column] = VectorIndex(ids, vectors)
        return self._vectors[column]

    def _describe(self, image: ImageInput) -> tuple[list[int], list[float], np.ndarray]:
        """(caption ids, match scores, mean caption vector) of a query image.

        An indexed, unchanged file is read from the index: no model needed.
        """
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
                    return record.caption_ids, record.caption_scores, record.caption_vector
            try:
                image = decode(path).image
            except BadImage as exc:
                raise ImgsearchError(f"{image}: {exc}") from None
        pixels = self.model.preprocess(image).unsqueeze(0)
        vectors = self.model.encode_images(pixels)
        scores, ids = self.bank.top(vectors.text_space, self.top_n)
        return ids[0].tolist(), scores[0].tolist(), self.bank.mean_vectors(ids)[0]

    def _relative(self, path: Path, must_exist: bool = True) -> str | None:
        """``path`` relative to the root in POSIX form, or None when it lies outside."""
        if must_exist and not path.exists():
            return None
        try:
            relative = path.expanduser().resolve().relative_to(self.root)
        except ValueError:
            return None
        return "" if relative == Path(".") else relative.as_posix()


def evaluate_folder(
    folder: str | os.PathLike,
    db: str | os.PathLike | None = None,
    model: str | None = None,
    device: str | None = None,
    say: Callable[[str], None] | None = None,
    progress: bool = False,
) -> Evaluation:
    """Index a labeled folder (incrementally) and measure leave-one-out retrieval."""
    labels = read_labels(Path(folder))
    with Index.create(folder, db, model, device=device, say=say) as index:
        index.add(
            progress=progress,
            on_skip=(lambda s: say(f"skipped {s.path}: {s.reason}")) if say else None,
        )
        return index.evaluate(labels)
