"""The caption bank searched by one matrix product and topk (the GPU path, run here on CPU
tensors) finds what FAISS finds: the same ids but where two captions tie within 1e-5, and
the same scores to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgsearch.captions import CaptionBank

BANK_SIZE = 6197  # the packaged bank's captions


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def bank_like(dim: int, clustered: bool, seed: int = 0) -> CaptionBank:
    """Random unit vectors of the bank's shape; ``clustered``: around 300 centres, as a bank
    of templates ("a photo of a ...") is, where close scores are common."""
    rng = np.random.default_rng(seed)
    if clustered:
        centres = rng.standard_normal((300, dim))
        vectors = centres[rng.integers(0, 300, BANK_SIZE)] + 0.3 * rng.standard_normal(
            (BANK_SIZE, dim)
        )
    else:
        vectors = rng.standard_normal((BANK_SIZE, dim))
    return CaptionBank([str(i) for i in range(BANK_SIZE)], unit(vectors))


def queries_for(bank: CaptionBank, count: int = 96, seed: int = 1) -> np.ndarray:
    """Images land near some captions: sums of a few bank vectors plus noise."""
    rng = np.random.default_rng(seed)
    picks = bank.vectors[rng.integers(0, len(bank.texts), (count, 3))].sum(axis=1)
    return unit(picks + 0.5 * rng.standard_normal(picks.shape))


@pytest.mark.parametrize("dim", [384, 512])
@pytest.mark.parametrize("clustered", [False, True])
def test_matrix_product_and_topk_find_what_faiss_finds(dim: int, clustered: bool) -> None:
    bank = bank_like(dim, clustered)
    queries = queries_for(bank)
    want_scores, want_ids = bank.top(queries, 30)
    scores, ids = bank.top_matmul(torch.from_numpy(queries), 30, "cpu")
    assert ids.dtype == np.int64 and ids.shape == want_ids.shape == (96, 30)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    exact = queries.astype(np.float64) @ bank.vectors.astype(np.float64).T
    rows = np.arange(len(queries))[:, None]
    # Where the ids differ, the two captions score within 1e-5 of each other.
    assert np.abs(exact[rows, ids] - exact[rows, want_ids]).max() <= 1e-5
    assert (ids == want_ids).mean() > 0.99


def test_numpy_queries_and_a_short_bank_work_too() -> None:
    bank = CaptionBank(["a", "b", "c"], unit(np.eye(3, 8) + 0.1))
    queries = unit(np.random.default_rng(0).standard_normal((4, 8)))
    want = bank.top(queries, 10)  # more asked for than the bank holds
    got = bank.top_matmul(queries, 10)
    assert got[1].shape == (4, 3)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)


def test_a_cuda_device_takes_the_matrix_product(monkeypatch: pytest.MonkeyPatch) -> None:
    bank = bank_like(64, False)
    called = []
    monkeypatch.setattr(
        CaptionBank, "top_matmul", lambda self, q, n, device="cpu": called.append(str(device))
    )
    bank.top(queries_for(bank, 2), 5, device="cuda:0")
    bank.top(queries_for(bank, 2), 5, device="cpu")  # FAISS
    assert called == ["cuda:0"]


def test_faiss_with_fewer_threads_gives_the_same_and_restores_them() -> None:
    import faiss

    bank = bank_like(128, True)
    queries = queries_for(bank)
    before = faiss.omp_get_max_threads()
    want = bank.top(queries, 20)
    got = bank.top(queries, 20, threads=1)
    assert faiss.omp_get_max_threads() == before
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
