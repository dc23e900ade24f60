"""The compressed search index (IVF + PQ codes, exact vectors re-read from a file): chosen by
the memory budget, finds the exact top 10 after re-ranking, persists with its vectors file,
is rebuilt when the database changes; the --index-memory option from the command line."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from imgsearch.api import Index, parse_size
from imgsearch.cli import main
from imgsearch.errors import ImgsearchError
from imgsearch.search import CODE_DIMS, IndexFileError, VectorIndex, code_bytes, flat_bytes
from tests.conftest import sample

DIM = 64
N = 20_000
BUDGET = flat_bytes(N, DIM) // 4  # well below the flat vectors: the compressed kind
# Measured on these vectors: recall@10 0.99 re-ranked, 0.67 from the codes alone.
RECALL_BOUND = 0.9


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit rows around 200 fixed centres, loose enough that codes alone misorder them."""
    centres = np.random.default_rng(0).standard_normal((200, DIM))
    rng = np.random.default_rng(seed)
    rows = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.arange(N, dtype=np.int64) * 3 + 11  # database ids are not row numbers
    return ids, clustered(N, 1), clustered(200, 2)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vectors")


@pytest.fixture(scope="module")
def compressed(data, workdir: Path) -> VectorIndex:
    ids, rows, _ = data
    return VectorIndex(ids, rows, memory=BUDGET, workdir=workdir)


def exact_top(data, query: np.ndarray, k: int = 10, keep: np.ndarray | None = None) -> list[int]:
    ids, rows, _ = data
    scores = rows @ query
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def recall(index: VectorIndex, data, rerank: bool) -> float:
    found = [
        len({i for i, _ in index.search(q, 10, rerank=rerank)} & set(exact_top(data, q)))
        for q in data[2]
    ]
    return sum(found) / (10 * len(data[2]))


def test_budget_picks_the_kind(data, compressed):
    ids, rows, _ = data
    assert compressed.kind == "compressed"
    assert compressed.code_bytes == code_bytes(N, DIM, BUDGET) == DIM // CODE_DIMS
    assert 1 <= compressed.nprobe <= compressed.nlist and compressed.depth >= 10
    assert compressed.memory_bytes() < flat_bytes(N, DIM) / 2
    ample = VectorIndex(ids[:3000], rows[:3000], memory=flat_bytes(3000, DIM))
    assert ample.kind == "exact"  # fits: as without a budget
    assert compressed.suits(BUDGET) and not compressed.suits(flat_bytes(N, DIM))
    assert not compressed.suits(N * 30)  # a smaller budget means a smaller code
    assert code_bytes(N, DIM, N * 30) < compressed.code_bytes
    assert code_bytes(N, DIM, 1) == 1  # below any code: the smallest


def test_reranking_finds_the_exact_top10(data, compressed):
    with_rerank = recall(compressed, data, rerank=True)
    codes_only = recall(compressed, data, rerank=False)
    assert with_rerank >= RECALL_BOUND
    assert with_rerank >= codes_only + 0.2
    ids, rows, queries = data
    for query in queries[:5]:
        found = compressed.search(query, 10)
        scores = [s for _, s in found]
        assert scores == sorted(scores, reverse=True)
        exact = rows[(np.array([i for i, _ in found]) - 11) // 3] @ query
        assert np.allclose(scores, exact, atol=1e-3)  # exact scores, of float16 vectors


def test_filters(data, compressed):
    ids = data[0]
    small = ids[::500]  # 40 images: their lists are covered whole, so exactly searched
    large = ids[::2]
    for query in data[2][:5]:
        keep = np.isin(ids, small)
        assert [i for i, _ in compressed.search(query, 10, allowed=small)] == exact_top(
            data, query, keep=keep
        )
        best = exact_top(data, query, keep=np.isin(ids, large))
        exclude = set(best[:3])
        got = [i for i, _ in compressed.search(query, 10, allowed=large, exclude=exclude)]
        assert len(got) == 10 and set(got) <= set(large.tolist()) and not set(got) & exclude
        assert len(set(got) & set(best[3:])) >= 5


def test_save_load_and_the_vectors_file(tmp_path: Path, data, compressed):
    path = tmp_path / "index.vix"
    compressed.stamp = "generation 7"
    compressed.save(path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[0] == "index.vix" and len(files) == 2 and files[1].endswith(".rows")
    loaded = VectorIndex.load(path)
    assert (loaded.kind, loaded.stamp, loaded.nprobe, loaded.depth, loaded.code_bytes) == (
        "compressed",
        "generation 7",
        compressed.nprobe,
        compressed.depth,
        compressed.code_bytes,
    )
    for query in data[2][:5]:
        assert loaded.search(query, 10) == compressed.search(query, 10)
    # A new build saved over it replaces the vectors file; the old one goes.
    ids, rows, _ = data
    rebuilt = VectorIndex(ids[:4000], rows[:4000], kind="compressed", workdir=tmp_path)
    rebuilt.save(path)
    after = sorted(p.name for p in tmp_path.iterdir())
    assert len(after) == 2 and after[1] != files[1]
    assert len(VectorIndex.load(path)) == 4000
    # A missing or truncated vectors file makes the index unusable: rebuild it.
    vectors = tmp_path / after[1]
    vectors.write_bytes(vectors.read_bytes()[:-10])
    with pytest.raises(IndexFileError, match="truncated"):
        VectorIndex.load(path)
    vectors.unlink()
    with pytest.raises(IndexFileError, match="cannot read"):
        VectorIndex.load(path)


def test_an_unsaved_index_leaves_no_file(tmp_path: Path, data):
    """Its vectors file goes with it; a killed build's file goes with the next build, while
    the file of a build still alive stays."""
    ids, rows, _ = data
    killed = tmp_path / ".vix-vectors-killed.tmp"
    killed.write_bytes(b"half a build")
    index = VectorIndex(ids[:2000], rows[:2000], kind="compressed", workdir=tmp_path)
    assert not killed.exists() and len(list(tmp_path.iterdir())) == 1
    assert index.search(rows[0], 1)[0][0] == ids[0]
    other = VectorIndex(ids[:1000], rows[:1000], kind="compressed", workdir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    assert index.search(rows[0], 1)[0][0] == other.search(rows[0], 1)[0][0] == ids[0]
    del index, other
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_bad_chunks_leave_no_file(tmp_path: Path):
    chunks = [(np.arange(3), np.ones((3, 8))), (np.arange(3, 5), np.ones((2, 9)))]
    with pytest.raises(ValueError, match="dimensions"):
        VectorIndex.from_chunks(chunks, workdir=tmp_path)
    with pytest.raises(ValueError, match="no vectors"):
        VectorIndex.from_chunks([], workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "size"),
    [("4GB", 4 << 30), ("512MB", 512 << 20), ("1.5g", 3 << 29), ("64KiB", 65536), ("1000", 1000)],
)
def test_parse_size(text: str, size: int):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["4XB", "", "GB", "0", "-1GB", "1.5", "4 GB B", "nan"])
def test_parse_size_refuses(text: str):
    with pytest.raises(ImgsearchError, match="bad memory size"):
        parse_size(text)


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("value", ["4XB", "0", "lots"])
def test_cli_refuses_a_bad_budget(photos: Path, value: str):
    result = run("index", str(photos), "--index-memory", value, "-q")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"imgsearch: error: bad memory size {value!r}: give a positive size such as 4GB or 512MB"
    ]
    assert not (photos / ".imgsearch").exists()  # refused before anything was made


def vix_files(photos: Path) -> list[str]:
    return sorted(p.name for p in (photos / ".imgsearch").iterdir() if ".vix" in p.name)


def test_cli_tiny_budget_end_to_end(photos: Path, tiny_clip: Path, small_bank: Path):
    """A budget below the flat vectors: the compressed kind, which still puts an exact copy
    first; the budget is kept for later runs; a change to the folder rebuilds it."""
    copy = photos / "copies" / "chelsea.jpg"
    copy.parent.mkdir()
    shutil.copy(photos / "chelsea.jpg", copy)
    args = ["--model", str(tiny_clip), "--captions", str(small_bank)]
    result = run("index", str(photos), *args, "--index-memory", "200B")
    assert result.exit_code == 0, result.output
    assert "search index: compressed" in result.stderr
    first = vix_files(photos)
    assert first[0] == "index.db.caption.vix" and first[1].endswith(".rows")
    db = str(photos / ".imgsearch" / "index.db")
    query = run("query", str(photos / "chelsea.jpg"), "--db", db, "-k", "3", "--json")
    assert query.exit_code == 0, query.output
    hits = json.loads(query.stdout)
    assert hits[0]["path"] == str(copy) and hits[0]["score"] == pytest.approx(1, abs=1e-3)
    with Index.open(db) as index:
        assert index.index_memory == 200
        assert index.search_index().kind == "compressed"
    # A new photo: the database changes, and the next query rebuilds (a new vectors file).
    shutil.copy(photos / "coffee.jpg", photos / "copies" / "coffee.jpg")
    assert run("index", str(photos), "-q").exit_code == 0
    assert vix_files(photos)[1] != first[1] and len(vix_files(photos)) == 2
    again = run("query", str(photos / "coffee.jpg"), "--db", db, "-k", "1", "--json")
    assert json.loads(again.stdout)[0]["path"] == str(photos / "copies" / "coffee.jpg")
    # A budget the vectors fit: back to the exact index, its vectors file gone.
    roomy = run("index", str(photos), "--index-memory", "1GB")
    assert roomy.exit_code == 0 and "search index: exact" in roomy.stderr
    assert vix_files(photos) == ["index.db.caption.vix"]


@pytest.mark.parametrize("method", ["caption", "image", "hybrid"])
def test_tiny_budget_on_an_empty_index(tmp_path: Path, tiny_clip: Path, small_bank: Path, method):
    """No images yet: the same clear error as without a budget, whatever the method."""
    empty = tmp_path / "empty"
    empty.mkdir()
    photo = tmp_path / "cat.jpg"
    sample("chelsea").save(photo)
    with Index.create(empty, model=str(tiny_clip), captions=small_bank) as index:
        index.set_index_memory("1KB")
        with pytest.raises(ImgsearchError, match="no images yet"):
            index.query(photo, method=method)
