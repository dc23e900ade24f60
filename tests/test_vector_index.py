"""VectorIndex: exact and IVF agree, filters hold for both, saved indexes load or fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgsearch.search import IndexFileError, VectorIndex

DIM = 32
N = 3000
EXACT_MAX = 1000  # lowered so a small collection takes the IVF path under kind="auto"


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit rows around 30 fixed centres: neighbours are clear, so IVF must find them all."""
    centres = np.random.default_rng(0).standard_normal((30, DIM))
    rng = np.random.default_rng(seed)
    rows = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.arange(N, dtype=np.int64) * 7 + 100  # database ids are not row numbers
    return ids, clustered(N, 1), clustered(20, 2)


@pytest.fixture(scope="module")
def exact(data) -> VectorIndex:
    ids, rows, _ = data
    return VectorIndex(ids, rows, kind="exact")


@pytest.fixture(scope="module")
def ivf(data) -> VectorIndex:
    ids, rows, _ = data
    return VectorIndex(ids, rows, exact_max=EXACT_MAX)


def brute(data, query: np.ndarray, k: int, allowed=None, exclude=()) -> list[int]:
    ids, rows, _ = data
    keep = np.isin(ids, list(allowed)) if allowed is not None else np.ones(len(ids), bool)
    keep &= ~np.isin(ids, list(exclude))
    scores = rows[keep] @ query
    return ids[keep][np.argsort(-scores, kind="stable")[:k]].tolist()


def top_ids(index: VectorIndex, query: np.ndarray, k: int = 10, **kw) -> list[int]:
    return [i for i, _ in index.search(query, k, **kw)]


def test_kind_follows_size(data, exact, ivf):
    ids, rows, _ = data
    assert VectorIndex(ids, rows).kind == "exact"  # 3000 is under the real EXACT_MAX
    assert exact.kind == "exact" and exact.nprobe == 0
    assert ivf.kind == "ivf"
    assert 1 <= ivf.nprobe <= ivf.nlist < N


def test_auto_stays_exact_where_ivf_would_scan_everything():
    """Uniform random rows have no lists to skip: IVF would cost an exact scan, so auto
    keeps the exact index; asking for IVF still gets it."""
    rows = np.random.default_rng(4).standard_normal((4000, 128)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    ids = np.arange(len(rows))
    auto = VectorIndex(ids, rows, exact_max=EXACT_MAX)
    assert (auto.kind, auto.nlist, auto.nprobe) == ("exact", 0, 0)
    forced = VectorIndex(ids, rows, kind="ivf")
    assert forced.kind == "ivf" and forced.nprobe > 0.75 * forced.nlist


def test_ivf_finds_the_exact_top10(data, exact, ivf):
    for query in data[2]:
        assert top_ids(ivf, query) == top_ids(exact, query) == brute(data, query, 10)
        scores = [s for _, s in ivf.search(query, 10)]
        assert scores == sorted(scores, reverse=True)
        assert np.allclose(scores, [s for _, s in exact.search(query, 10)], atol=1e-5)


@pytest.mark.parametrize("which", ["exact", "ivf"])
@pytest.mark.parametrize("share", [40, 2], ids=["small-subset", "large-subset"])
def test_allowed_and_exclude(data, exact, ivf, which, share):
    """A small subset is scored exactly; one over exact_max goes through the IVF filter."""
    index = exact if which == "exact" else ivf
    ids = data[0]
    allowed = ids[::share].tolist()
    for query in data[2][:5]:
        best = brute(data, query, 10, allowed=allowed)
        exclude = set(best[:3])
        got = top_ids(index, query, allowed=allowed, exclude=exclude)
        assert got == brute(data, query, 10, allowed=allowed, exclude=exclude)
        assert set(got) <= set(allowed) and not set(got) & exclude


@pytest.mark.parametrize("which", ["exact", "ivf"])
def test_filter_edges(data, exact, ivf, which):
    index = exact if which == "exact" else ivf
    ids, _, queries = data
    query = queries[0]
    assert index.search(query, 10, allowed=[]) == []
    assert top_ids(index, query, allowed=[int(ids[5]), 10**12, -3]) == [int(ids[5])]
    assert index.search(query, 10, allowed=[int(ids[5])], exclude={int(ids[5])}) == []
    assert len(index.search(query, N + 5)) == N
    assert top_ids(index, query, exclude=set(ids[:10].tolist())) == brute(
        data, query, 10, exclude=ids[:10]
    )


def test_sparse_ids(data):
    """Ids too spread out for a lookup table go through binary search, with the same result."""
    ids, rows, queries = data
    sparse = ids * 1_000_003 - 5_000_000
    index = VectorIndex(sparse, rows, exact_max=EXACT_MAX)
    assert index._table is None
    allowed = np.concatenate([sparse[::3], [12, -1, 10**15]])
    for query in queries[:5]:
        want = [int(sparse[np.flatnonzero(ids == i)[0]]) for i in brute(data, query, 10, ids[::3])]
        assert top_ids(index, query, allowed=allowed) == want


def test_subset_far_from_the_query(data, ivf):
    """A folder of one theme, queried with another: the probes follow the folder's lists."""
    ids, rows, queries = data
    theme = rows @ rows[0]
    folder = ids[np.argsort(-theme)[:600]]
    for query in queries[np.argsort(queries @ rows[0])[:5]]:  # the least like the folder
        assert top_ids(ivf, query, allowed=folder) == brute(data, query, 10, allowed=folder)


def test_calibrated_recall_on_new_queries():
    """Loose clusters, where IVF must probe ~40% of lists: new queries keep recall@10 >= 0.95."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((200, 64))

    def draw(n: int) -> np.ndarray:
        rows = centres[rng.integers(0, 200, n)] + 2 * rng.standard_normal((n, 64))
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    rows, queries = draw(20_000), draw(200)
    index = VectorIndex(np.arange(len(rows)), rows, kind="ivf")
    assert index.nprobe < index.nlist / 2  # it does skip most of the collection
    truth = np.argsort(-(queries @ rows.T), axis=1)[:, :10]
    found = [len(set(top_ids(index, q)) & set(t.tolist())) for q, t in zip(queries, truth)]
    assert sum(found) / truth.size >= 0.95


def test_empty_index(tmp_path: Path):
    index = VectorIndex(np.empty(0, np.int64), np.empty((0, DIM), np.float32))
    assert len(index) == 0 and index.search(np.ones(DIM), 5) == []
    index.save(tmp_path / "empty.vix")
    assert VectorIndex.load(tmp_path / "empty.vix").search(np.ones(DIM), 5) == []


def test_bad_arguments(data):
    ids, rows, _ = data
    with pytest.raises(ValueError, match="ids for"):
        VectorIndex(ids[:-1], rows)
    with pytest.raises(ValueError, match="kind"):
        VectorIndex(ids, rows, kind="hnsw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        VectorIndex(np.zeros(N, np.int64), rows)


def test_strided_ids_and_rows(data, exact):
    """Views (every other row, say) are copied before FAISS reads them through a pointer."""
    ids, rows, queries = data
    half = VectorIndex(ids[::2], rows[::2], kind="ivf")
    for query in queries[:5]:
        assert top_ids(half, query) == top_ids(exact, query, allowed=ids[::2])


@pytest.mark.parametrize("which", ["exact", "ivf"])
def test_save_load_roundtrip(tmp_path: Path, data, exact, ivf, which):
    index = exact if which == "exact" else ivf
    index.stamp = f"generation 42 {which}"
    path = tmp_path / "index.vix"
    path.write_bytes(b"an older file, replaced whole")
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.vix"]  # no temp file left
    with pytest.raises(TypeError):
        VectorIndex(data[0][:5], data[1][:5], stamp=7).save(tmp_path / "other.vix")  # type: ignore[arg-type]
    loaded = VectorIndex.load(path)
    assert loaded.stamp == index.stamp
    assert (loaded.kind, loaded.nlist, loaded.nprobe) == (index.kind, index.nlist, index.nprobe)
    assert np.array_equal(loaded.ids, index.ids) and len(loaded) == N
    ids = data[0]
    allowed = ids[::2].tolist()
    for query in data[2][:5]:
        assert loaded.search(query, 10) == index.search(query, 10)
        assert loaded.search(query, 10, allowed, {int(ids[0])}) == index.search(
            query, 10, allowed, {int(ids[0])}
        )


@pytest.mark.parametrize(
    "damage",
    ["flip-ids", "flip-index", "flip-header", "truncate", "truncate-head", "garbage", "empty"],
)
def test_damaged_file_raises_index_file_error(tmp_path: Path, ivf, damage):
    path = tmp_path / "index.vix"
    ivf.save(path)
    raw = bytearray(path.read_bytes())
    if damage.startswith("flip"):
        at = {"flip-header": 20, "flip-ids": 200, "flip-index": len(raw) // 2}[damage]
        raw[at] ^= 0x40
    elif damage == "truncate":
        raw = raw[: len(raw) - 1000]
    elif damage == "truncate-head":
        raw = raw[:10]
    elif damage == "garbage":
        raw = bytearray(b"not an index at all" * 100)
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError):
        VectorIndex.load(path)
    assert issubclass(IndexFileError, ValueError)  # callers may catch ValueError and rebuild


def test_missing_file_is_not_a_damaged_one(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "nothing.vix")
