"""Tests for relations: graphs against brute force, clusters, names, duplicates, set matching."""

from __future__ import annotations

import csv
import io
import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from imgsearch import relations
from imgsearch.relations import (
    Edge,
    components,
    graph_edges,
    kmeans_clusters,
    mean_set_similarity,
    name_clusters,
    set_similarity,
    short_caption,
    write_csv,
    write_graphml,
)
from imgsearch.results import graph_dict

GRAPHML = "{http://graphml.graphdrawing.org/xmlns}"

# The published example: rows are set A's images, columns set B's.
PUBLISHED = np.array(
    [
        [0.837, 0.835, 0.747, 0.703, 0.698],
        [0.803, 0.799, 0.838, 0.760, 0.769],
        [0.772, 0.752, 0.794, 0.761, 0.796],
        [0.787, 0.785, 0.794, 0.866, 0.881],
    ]
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(
    n_clusters: int, per: int, dim: int, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around random unit centres, and each row's true cluster."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_clusters, dim)))
    labels = np.repeat(np.arange(n_clusters), per)
    rows = centres[labels] + noise * rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
    order = rng.permutation(len(labels))
    return _unit(rows[order]), labels[order]


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    vectors, _ = clustered(10, 30, 32, noise=0.8)
    return vectors


def _gap_tau(scores: np.ndarray, start: float) -> float:
    """A threshold near ``start`` with no pair within 1e-4: float32 rounding cannot flip one."""
    for tau in np.arange(start, start + 0.2, 0.001):
        if np.abs(scores - tau).min() > 1e-4:
            return float(tau)
    raise AssertionError("no gap found")


def _as_dict(edges: list[Edge]) -> dict[tuple[int, int], float]:
    assert all(e.source < e.target for e in edges)
    pairs = {(e.source, e.target): e.score for e in edges}
    assert len(pairs) == len(edges), "an edge appears twice"
    return pairs


def _brute_knn(sim: np.ndarray, k: int) -> list[set[int]]:
    sim = sim.copy()
    np.fill_diagonal(sim, -np.inf)
    return [set(np.argsort(-row)[:k].tolist()) for row in sim]


# --- graph ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [64, 8192])
def test_range_graph_matches_brute_force(points: np.ndarray, block: int) -> None:
    sim = points @ points.T
    upper = sim[np.triu_indices(len(points), 1)]
    tau = _gap_tau(upper, 0.5)
    want = {
        (i, j): float(sim[i, j])
        for i, j in zip(*np.triu_indices(len(points), 1))
        if sim[i, j] >= tau
    }
    got = _as_dict(graph_edges(points, tau, block=block))
    assert 100 < len(want) < len(upper) // 5  # a sparse graph, but not an empty one
    assert set(got) == set(want)
    assert max(abs(got[p] - want[p]) for p in want) < 1e-5
    edges = graph_edges(points, tau, block=block)
    assert [(e.source, e.target) for e in edges] == sorted(want)


@pytest.fixture(params=["from_range", "knn_search"])
def knn_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways to a k-NN graph: cut from the range search's pairs, or a k-NN search."""
    degree = 10**9 if request.param == "from_range" else -1
    monkeypatch.setattr(relations, "KNN_FROM_RANGE_DEGREE", degree)
    return request.param


@pytest.mark.parametrize("mutual", [False, True])
def test_knn_graph_matches_brute_force(points: np.ndarray, mutual: bool, knn_way: str) -> None:
    sim = points @ points.T
    k = 5
    tau = _gap_tau(sim[np.triu_indices(len(points), 1)], 0.3)
    near = _brute_knn(sim, k)
    want = {}
    for i, j in zip(*np.triu_indices(len(points), 1)):
        linked = (j in near[i] and i in near[j]) if mutual else (j in near[i] or i in near[j])
        if linked and sim[i, j] >= tau:
            want[(int(i), int(j))] = float(sim[i, j])
    got = _as_dict(graph_edges(points, tau, k=k, mutual=mutual, block=64))
    assert set(got) == set(want)
    assert max(abs(got[p] - want[p]) for p in want) < 1e-5
    degree = np.bincount([r for p in got for r in p], minlength=len(points))
    if mutual:
        assert degree.max() <= k
    # The k-NN graph is a subgraph of the thresholded graph, the mutual one of the k-NN one.
    assert set(got) <= set(_as_dict(graph_edges(points, tau)))


def test_knn_variants_nest(points: np.ndarray, knn_way: str) -> None:
    knn = set(_as_dict(graph_edges(points, 0.0, k=4)))
    mutual = set(_as_dict(graph_edges(points, 0.0, k=4, mutual=True)))
    assert mutual < knn
    assert len(knn) >= len(points) * 4 // 2


def test_knn_with_exact_copies_has_no_self_edges(knn_way: str) -> None:
    rng = np.random.default_rng(3)
    base = _unit(rng.standard_normal((6, 8)))
    vectors = np.concatenate([base, base, base])  # every row three times
    edges = graph_edges(vectors, 0.99, k=2, block=4)
    assert all(e.source < e.target for e in edges)
    # Each row's two nearest are its two copies: the graph is 6 triangles.
    assert {(e.source, e.target) for e in edges} == {
        pair for i in range(6) for pair in [(i, i + 6), (i, i + 12), (i + 6, i + 12)]
    }


def test_knn_way_follows_density(points: np.ndarray) -> None:
    """The default picks the range search for a sparse graph and k-NN search for a dense one."""
    assert relations._mean_degree(points, 0.99, 64) == 0
    assert relations._mean_degree(points, -1.0, 64) == len(points) - 1
    sim = points @ points.T
    want = (np.count_nonzero(sim >= 0.5) - len(points)) / len(points)
    assert relations._mean_degree(points, 0.5, 64) == pytest.approx(want, rel=1e-3)


def test_graph_edge_cases() -> None:
    assert graph_edges(np.zeros((1, 4), np.float32), 0.5) == []
    assert graph_edges(np.zeros((0, 4), np.float32), 0.5, k=3) == []
    two = _unit(np.array([[1.0, 0.0], [1.0, 0.1]]))
    assert len(graph_edges(two, 0.9, k=10)) == 1  # k above n - 1 is cut to it
    with pytest.raises(ValueError, match="mutual"):
        graph_edges(two, 0.5, mutual=True)


def test_components_include_isolated_nodes() -> None:
    edges = [Edge(0, 1, 0.9), Edge(1, 2, 0.8), Edge(4, 5, 0.7), Edge(5, 6, 0.9), Edge(6, 8, 1)]
    assert components(10, edges) == [[4, 5, 6, 8], [0, 1, 2], [3], [7], [9]]
    assert components(3, []) == [[0], [1], [2]]
    assert components(0, []) == []


# --- graph output -----------------------------------------------------------------------

NODES = ["/photos/a.jpg", "/photos/b & <c>.jpg", '/photos/"d",e.jpg', "/photos/\x01odd.jpg"]
EDGES = [Edge(0, 1, 0.91), Edge(1, 2, 0.8512345678)]
GROUPS = [[0, 1, 2], [3]]


def _parse_graphml(text: str) -> ET.Element:
    return ET.fromstring(text.encode("utf-8"))


def test_graphml_is_valid_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "graph.graphml"
    write_graphml(path, NODES, EDGES, GROUPS)
    root = ET.parse(path).getroot()
    assert root.tag == f"{GRAPHML}graphml"
    keys = {k.get("id"): (k.get("for"), k.get("attr.name"), k.get("attr.type")) for k in root}
    keys.pop("G", None)
    assert keys == {
        "path": ("node", "path", "string"),
        "group": ("node", "group", "int"),
        "score": ("edge", "score", "double"),
    }
    graph = root.find(f"{GRAPHML}graph")
    assert graph is not None and graph.get("edgedefault") == "undirected"
    nodes = graph.findall(f"{GRAPHML}node")
    edges = graph.findall(f"{GRAPHML}edge")
    assert [n.get("id") for n in nodes] == ["n0", "n1", "n2", "n3"]
    paths = [n.find(f"{GRAPHML}data[@key='path']").text for n in nodes]
    assert paths[:3] == NODES[:3]
    assert paths[3] == "/photos/\ufffdodd.jpg"  # a control character XML cannot hold
    assert [n.find(f"{GRAPHML}data[@key='group']").text for n in nodes] == ["0", "0", "0", "1"]
    assert [(e.get("source"), e.get("target")) for e in edges] == [("n0", "n1"), ("n1", "n2")]
    scores = [float(e.find(f"{GRAPHML}data[@key='score']").text) for e in edges]
    assert scores == pytest.approx([0.91, 0.8512345678], abs=1e-6)


def test_graphml_without_groups_to_streams() -> None:
    text = io.StringIO()
    write_graphml(text, NODES, EDGES, None)
    root = _parse_graphml(text.getvalue())
    assert {k.get("id") for k in root.findall(f"{GRAPHML}key")} == {"path", "score"}
    assert not root.findall(f".//{GRAPHML}data[@key='group']")
    binary = io.BytesIO()
    write_graphml(binary, NODES, EDGES, None)
    assert not binary.closed
    assert binary.getvalue().decode("utf-8") == text.getvalue()


def test_csv_has_header_and_paths(tmp_path: Path) -> None:
    out = io.StringIO()
    write_csv(out, NODES, EDGES)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["source", "target", "score"]
    assert rows[1:] == [[NODES[0], NODES[1], "0.910000"], [NODES[1], NODES[2], "0.851235"]]
    path = tmp_path / "edges.csv"
    write_csv(path, NODES, EDGES)
    assert path.read_text("utf-8") == out.getvalue()


def test_graph_dict_is_json_by_path() -> None:
    data = json.loads(json.dumps(graph_dict(NODES, EDGES, GROUPS)))
    assert data["nodes"] == NODES
    assert data["edges"][1] == {"source": NODES[1], "target": NODES[2], "score": 0.851235}
    assert data["groups"] == [NODES[:3], NODES[3:]]
    assert "groups" not in graph_dict(NODES, EDGES)


# --- clusters ---------------------------------------------------------------------------


def test_kmeans_recovers_separated_clusters() -> None:
    vectors, truth = clustered(6, 50, 64, noise=0.6, seed=1)
    # Mean caption vectors are shorter than 1, by how much their captions disagree.
    lengths = np.random.default_rng(2).uniform(0.3, 1.0, (len(vectors), 1)).astype(np.float32)
    groups = kmeans_clusters(vectors * lengths, 6, seed=0)
    assert sorted(row for g in groups for row in g) == list(range(len(vectors)))
    assert all(g == sorted(g) for g in groups)
    assert [len(g) for g in groups] == sorted((len(g) for g in groups), reverse=True)
    found = np.empty(len(vectors), dtype=int)
    for number, members in enumerate(groups):
        found[members] = number
    assert adjusted_rand_score(truth, found) > 0.98
    # Spherical: a row's length never changes its cluster.
    assert kmeans_clusters(vectors, 6, seed=0) == groups


def test_kmeans_with_more_clusters_than_rows() -> None:
    vectors = _unit(np.random.default_rng(0).standard_normal((3, 8)))
    groups = kmeans_clusters(vectors, 10)
    assert sorted(row for g in groups for row in g) == [0, 1, 2]
    assert len(groups) == 3
    assert kmeans_clusters(vectors[:0], 4) == []
    with pytest.raises(ValueError):
        kmeans_clusters(vectors, 0)


def test_naming_picks_the_most_common_caption() -> None:
    texts = [
        "a photo of a tench",
        "a close-up photo of a tench",
        "a photo with a goldfish in it",
        "a photo of a beach",
        "a view of the sky",
        "a wide photo of a harbor",
        "a photo of a dog",
        "a photo of a cat",
    ]
    member_captions = [
        [1, 0, 2],  # rows 0-2 share "tench" twice over, then a goldfish
        [0, 1, 3],
        [0, 1, 2],
        [4, 5],
        [5, 4],
        [7, 6],  # row 5 alone
    ]
    clusters = name_clusters([[4, 3], [5], [2, 0, 1]], member_captions, texts, top=3)
    assert [c.members for c in clusters] == [[0, 1, 2], [3, 4], [5]]
    assert clusters[0].captions == [texts[0], texts[1], texts[2]]
    assert clusters[0].name == "tench / goldfish"
    # Rows 3 and 4 both have captions 4 and 5: without scores the lower id wins ...
    assert clusters[1].captions[0] == texts[4]
    assert clusters[1].name == "sky / harbor"
    # ... with scores, the higher total.
    scores = [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3], [0.3, 0.3, 0.3], [0.1, 0.9], [0.8, 0.2], [1, 1]]
    scored = name_clusters([[3, 4]], member_captions, texts, top=1, member_scores=scores)
    assert scored[0].captions == [texts[5]] and scored[0].name == "harbor"


def test_short_caption() -> None:
    assert short_caption("a close-up photo of an electric ray") == "electric ray"
    assert short_caption("a photo with a tench in it") == "tench"
    assert short_caption("a photo of a person wearing a hat") == "person wearing a hat"
    assert short_caption("a screenshot of a map") == "screenshot of a map"
    assert short_caption("stars in the night sky") == "stars in the night sky"


# --- sets of images ---------------------------------------------------------------------


def test_greedy_on_the_published_example() -> None:
    match = set_similarity(PUBLISHED, "greedy")
    one_based = [(i + 1, j + 1, round(s, 3)) for i, j, s in match.pairs]
    assert one_based == [(4, 5, 0.881), (2, 3, 0.838), (1, 1, 0.837), (3, 4, 0.761)]
    assert round(match.score, 3) == 0.829


def test_hungarian_on_the_published_example() -> None:
    greedy = set_similarity(PUBLISHED, "greedy")
    match = set_similarity(PUBLISHED, "hungarian")
    total = sum(s for _, _, s in match.pairs)
    best = max(
        sum(PUBLISHED[i, j] for i, j in enumerate(cols))
        for cols in itertools.permutations(range(5), 4)
    )
    assert total == pytest.approx(best)
    assert total >= sum(s for _, _, s in greedy.pairs)
    assert total == pytest.approx(3.337)  # 0.837 + 0.838 + 0.796 + 0.866
    assert [p[:2] for p in match.pairs] == [(0, 0), (1, 2), (2, 4), (3, 3)]  # by row
    assert match.score == pytest.approx(total / 4)
    assert set_similarity(PUBLISHED).score == match.score  # the default


def test_ordered() -> None:
    with pytest.raises(ValueError, match="same size"):
        set_similarity(PUBLISHED, "ordered")
    square = PUBLISHED[:, :4]
    match = set_similarity(square, "ordered")
    assert match.pairs == [(i, i, square[i, i]) for i in range(4)]
    assert match.score == pytest.approx(np.trace(square) / 4)


def test_min_pair_and_top_m() -> None:
    kept = set_similarity(PUBLISHED, "greedy", min_pair=0.8)
    assert [p[:2] for p in kept.pairs] == [(3, 4), (1, 2), (0, 0)]
    assert kept.score == pytest.approx((0.881 + 0.838 + 0.837) / 3)
    assert set_similarity(PUBLISHED, "greedy", min_pair=0.9) == set_similarity(
        PUBLISHED, "hungarian", min_pair=0.95
    )
    assert set_similarity(PUBLISHED, "greedy", min_pair=0.9).score == 0.0
    assert set_similarity(PUBLISHED, "greedy", min_pair=0.9).pairs == []
    top = set_similarity(PUBLISHED, "greedy", top_m=2)
    assert top.score == pytest.approx((0.881 + 0.838) / 2)
    hungarian = set_similarity(PUBLISHED, "hungarian", top_m=2)
    assert [p[:2] for p in hungarian.pairs] == [(1, 2), (3, 3)]  # the two best, by row
    assert hungarian.score == pytest.approx((0.838 + 0.866) / 2)
    both = set_similarity(PUBLISHED, "hungarian", min_pair=0.8, top_m=10)
    assert both.score == pytest.approx((0.837 + 0.838 + 0.866) / 3)
    with pytest.raises(ValueError):
        set_similarity(PUBLISHED, "greedy", top_m=0)


def test_methods_and_mean() -> None:
    with pytest.raises(ValueError, match="mean_set_similarity"):
        set_similarity(PUBLISHED, "mean")
    with pytest.raises(ValueError, match="hungarian"):
        set_similarity(PUBLISHED, "best")
    assert set_similarity(np.zeros((0, 3))).score == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 16)), rng.standard_normal((6, 16))
    assert mean_set_similarity(a, b) == pytest.approx(float((a @ b.T).mean()))
    with pytest.raises(ValueError):
        mean_set_similarity(a[:0], b)


def test_large_collections_use_an_approximate_index_that_finds_nearly_every_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(60, 48))
    points = centres[rng.integers(0, 60, 3000)] + rng.normal(scale=0.25, size=(3000, 48))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    exact = relations.edge_arrays(points, 0.9)
    monkeypatch.setattr(relations, "APPROXIMATE_ABOVE", 1000)
    approximate = relations.edge_arrays(points, 0.9)
    found = set(zip(*approximate[:2]))
    truth = set(zip(*exact[:2]))
    assert len(truth) > 1000
    assert found <= truth  # every edge it reports is a true edge
    assert len(found) >= 0.95 * len(truth)
    assert np.all(approximate[0] < approximate[1]) and np.all(approximate[2] >= 0.9)
    knn = relations.edge_arrays(points, 0.5, k=5, mutual=True)
    assert len(knn[0]) > 0 and np.all(knn[2] >= 0.5)
