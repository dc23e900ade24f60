"""Graph, clusters, duplicates and sets through the command line, on real photos."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import ImageOps

from imgsearch.cli import main
from tests.conftest import sample, write_photos
from tests.test_cli import run


@pytest.fixture
def library(tmp_path: Path, small_bank: Path) -> Path:
    root = tmp_path / "library"
    write_photos(root)
    cat = sample("chelsea")
    cat.save(root / "chelsea-copy.png")  # the same photo, re-encoded
    cat.resize((cat.width // 2, cat.height // 2)).save(root / "chelsea-small.jpg", quality=70)
    done = run("index", str(root), "--model", "offline", "--captions", str(small_bank), "-q")
    assert done.exit_code == 0, done.output
    return root


def test_graph_formats_agree(library: Path, tmp_path: Path) -> None:
    every = json.loads(
        run("graph", "--k", "0", "--tau", "-1", "--method", "caption", "--json", cwd=library).stdout
    )
    assert len(every["edges"]) == 10 * 9 // 2  # every pair clears tau -1
    scores = sorted(e["score"] for e in every["edges"])
    tau = round((scores[29] + scores[30]) / 2, 6)  # between two scores: exactly 15 edges
    assert scores[30] - scores[29] > 1e-5
    args = ["graph", "--k", "0", "--tau", str(tau), "--method", "caption"]
    as_json = json.loads(run(*args, "--json", cwd=library).stdout)
    edges = {(e["source"], e["target"]) for e in as_json["edges"]}
    assert len(edges) == 45 - 30 and all(e["score"] >= tau for e in as_json["edges"])
    assert as_json["tau"] == tau and as_json["method"] == "caption"
    assert sorted(p for g in as_json["groups"] for p in g) == sorted(as_json["nodes"])
    copies = {str(library / "chelsea.jpg"), str(library / "chelsea-copy.png")}
    assert any({a, b} == copies for a, b in edges)
    text = run(*args, "--format", "csv", cwd=library).stdout
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["source", "target", "score"]
    assert {(r[0], r[1]) for r in rows[1:]} == edges
    out = tmp_path / "graph.graphml"
    done = run(*args, "--format", "graphml", "-o", str(out), cwd=library)
    assert done.exit_code == 0 and done.stdout == ""
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    tree = ET.parse(out)
    assert len(tree.findall(".//g:edge", ns)) == len(edges)
    assert len(tree.findall(".//g:node", ns)) == len(as_json["nodes"])
    for name, fmt in (("g.json", "json"), ("g.csv", "csv"), ("g.graphml", "graphml")):
        done = run(*args, "-o", str(tmp_path / name), cwd=library)  # the suffix tells
        assert done.exit_code == 0 and done.stdout == "", done.output
        assert done.stderr.startswith(f"imgsearch: wrote {tmp_path / name} ({fmt}): 15 edges")
    assert json.loads((tmp_path / "g.json").read_text()) == as_json
    assert (tmp_path / "g.csv").read_text() == text
    done = run(*args, "-o", str(tmp_path / "edges.txt"), "--format", "csv", cwd=library)
    assert (tmp_path / "edges.txt").read_text() == text  # --format over the suffix


def test_graph_prints_a_summary_by_default(library: Path) -> None:
    args = ["graph", "--k", "0", "--tau", "-1", "--method", "caption"]
    done = run(*args, cwd=library)
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[:2] == [
        "10 images, 45 edges, 1 group: 1 of two or more images, 0 of one",
        "method caption, tau -1: every pair at or above tau",
    ]
    assert lines[2] == "largest groups:" and len(lines) == 4
    shown = lines[3].removeprefix("  10 images: ").removesuffix(" (+7 more)").split(", ")
    assert len(shown) == 3 and all(Path(p).is_file() and library in Path(p).parents for p in shown)
    assert (
        done.stderr
        == "imgsearch: the whole graph: --json, or -o FILE [--format json|graphml|csv]\n"
    )
    default = run("graph", cwd=library).stdout.splitlines()
    graph = json.loads(run("graph", "--json", cwd=library).stdout)
    groups = [g for g in graph["groups"] if len(g) > 1]
    assert default[0].startswith(f"10 images, {len(graph['edges'])} edge")
    assert default[1] == (
        "method hybrid, tau 0.56: mutual nearest neighbours (each among the other's 5 nearest)"
    )
    assert len(default) == 2 + bool(groups) + min(len(groups), 5) + (len(groups) > 5)
    copies = {str(library / "chelsea.jpg"), str(library / "chelsea-copy.png")}
    assert any(copies <= set(line.split(": ", 1)[-1].split(", ")) for line in default[3:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--json", "--format", "csv"], "--json prints JSON, --format csv asks for csv: give one"),
        (["--json", "-o", "g.json"], "--json prints the graph, -o FILE writes it (as JSON too)"),
        (["--format", "xml"], "Invalid value for '--format': 'xml' is not one of"),
        (["--k", "-1"], "--k must be 0 (every pair above tau) or a number of neighbours"),
        (["-o", "."], "-o . is a folder: give a file to write the graph to"),
        (["-o", "no/such/folder/g.csv"], "cannot write the graph to no/such/folder/g.csv: No such"),
        (["--method", "colour"], "Invalid value for '--method': 'colour' is not one of"),
    ],
)
def test_each_graph_mistake_is_one_line(library: Path, args: list[str], message: str) -> None:
    done = run("graph", *args, cwd=library)
    assert done.exit_code in (1, 2) and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("imgsearch: error: ")
    assert message in done.stderr, done.stderr


def test_default_graph_links_mutual_neighbours_only(library: Path) -> None:
    everything = json.loads(run("graph", "--k", "0", "--tau", "-1", "--json", cwd=library).stdout)
    assert len(everything["edges"]) == 45
    loose = json.loads(run("graph", "--tau", "-1", "--json", cwd=library).stdout)
    assert loose["k"] == 5 and loose["mutual"] is True and loose["method"] == "hybrid"
    assert 0 < len(loose["edges"]) < 45
    default = json.loads(run("graph", "--json", cwd=library).stdout)
    assert default["tau"] == 0.56  # the graph's own calibrated tau
    assert len(default["edges"]) <= len(loose["edges"])
    assert all(e["score"] >= 0.56 for e in default["edges"])


def test_clusters_cover_every_image_once(library: Path) -> None:
    for args in (["--k", "3"], ["--tau", "0.4"], ["--tau", "0.4", "--method", "image"]):
        result = run("clusters", *args, "--json", cwd=library)
        assert result.exit_code == 0, result.output
        found = json.loads(result.stdout)
        members = [m for c in found for m in c["members"]]
        assert len(members) == len(set(members)) == 10
        assert all(c["name"] and c["captions"] for c in found)
    by_k = json.loads(run("clusters", "--k", "3", "--json", cwd=library).stdout)
    assert len(by_k) == 3
    cat = next(c for c in by_k if str(library / "chelsea.jpg") in c["members"])
    assert str(library / "chelsea-copy.png") in cat["members"] and "cat" in cat["name"]
    both = run("clusters", "--k", "3", "--tau", "0.5", cwd=library)
    assert both.exit_code == 1 and "not both" in both.stderr


def test_sets_rank_items_by_set_similarity(tmp_path: Path, small_bank: Path) -> None:
    root = tmp_path / "items"
    views = {
        "cat_a": [sample("chelsea"), ImageOps.mirror(sample("chelsea"))],
        "cat_b": [
            sample("chelsea").rotate(5),
            sample("chelsea").crop((40, 30, 400, 300)),
            ImageOps.grayscale(sample("chelsea")).convert("RGB"),
        ],
        "coffee": [sample("coffee"), ImageOps.mirror(sample("coffee"))],
        "space": [sample("rocket"), sample("astronaut")],
    }
    for item, images in views.items():
        (root / item).mkdir(parents=True)
        for i, image in enumerate(images):
            image.save(root / item / f"{i}.jpg")
    runner = CliRunner()
    args = [
        "sets",
        str(root),
        "--query",
        str(root / "cat_a"),
        "--captions",
        str(small_bank),
        "--model",
        "offline",
        "-q",
        "--json",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout)
    assert [Path(h["item"]).name for h in ranked][0] == "cat_b"
    assert len(ranked) == 3 and ranked == sorted(ranked, key=lambda h: -h["score"])
    for method in ["greedy", "mean"]:
        other = json.loads(runner.invoke(main, [*args, "--method", method]).stdout)
        assert Path(other[0]["item"]).name == "cat_b"
    ordered = runner.invoke(main, [*args, "--method", "ordered"])
    assert ordered.exit_code == 1 and "same size" in ordered.stderr
    top1 = json.loads(runner.invoke(main, [*args, "--top-m", "1"]).stdout)
    assert top1[0]["score"] >= ranked[0]["score"]
    assert runner.invoke(main, [*args[:3], str(root / "nope"), *args[4:]]).exit_code == 2
