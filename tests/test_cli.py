"""The command line as a user runs it: real folders, a real SQLite file, click's runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgsearch.cli import main
from tests.conftest import sample


def run(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(main, list(args))
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(main, list(args))
    finally:
        os.chdir(old)


@pytest.fixture
def indexed(photos: Path, small_bank: Path) -> Path:
    result = run("index", str(photos), "--model", "offline", "--captions", str(small_bank), "-q")
    assert result.exit_code == 0, result.output
    return photos


def test_index_prints_a_summary_and_json(photos: Path, small_bank: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = run("index", str(photos), "--model", "offline", "--captions", str(small_bank))
    assert result.exit_code == 0
    assert "added 8, updated 0, moved 0, removed 0, unchanged 0, skipped 1" in result.stdout
    assert "skipped broken.jpg:" in result.stderr
    again = run("index", str(photos), "--json")
    summary = json.loads(again.stdout)
    assert summary["added"] == 0 and summary["unchanged"] == 8
    assert [s["path"] for s in summary["skipped"]] == ["broken.jpg"]
    keys = {"added", "updated", "moved", "removed", "unchanged", "skipped", "seconds"}
    assert set(summary) == keys


def test_query_ranks_the_collection_and_leaves_the_query_out(indexed: Path) -> None:
    result = run("query", str(indexed / "chelsea.jpg"), "-k", "3", "--json", cwd=indexed)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 3
    assert all(Path(h["path"]).is_absolute() for h in hits)
    assert str(indexed / "chelsea.jpg") not in [h["path"] for h in hits]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    text = run("query", str(indexed / "chelsea.jpg"), "-k", "3", cwd=indexed)
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].split("  ", 1)[1] == hits[0]["path"]


def test_query_found_from_a_subfolder_and_with_db(indexed: Path, tmp_path: Path) -> None:
    sub = indexed / "sub"
    sub.mkdir()
    assert run("query", str(indexed / "coffee.jpg"), cwd=sub).exit_code == 0
    db = indexed / ".imgsearch" / "index.db"
    result = run("query", str(indexed / "coffee.jpg"), "--db", str(db), "--json", cwd=tmp_path)
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 7


def test_query_options_under_text_explain_and_several_images(indexed: Path) -> None:
    nested = indexed / "space"
    nested.mkdir()
    (indexed / "rocket.jpg").rename(nested / "rocket.jpg")
    (indexed / "astronaut.jpg").rename(nested / "astronaut.jpg")
    assert run("index", str(indexed), "-q").exit_code == 0
    chelsea = str(indexed / "chelsea.jpg")
    under = run("query", chelsea, "--under", str(nested), "--json", cwd=indexed)
    assert {Path(h["path"]).parent for h in json.loads(under.stdout)} == {nested}
    text = json.loads(run("query", "--text", "a cat", "-k", "4", "--json", cwd=indexed).stdout)
    assert len(text) == 4 and text == sorted(text, key=lambda h: -h["score"])
    explained = run(
        "query", str(indexed / "coffee.jpg"), "-k", "2", "--explain", "--json", cwd=indexed
    )
    assert all("shared" in h for h in json.loads(explained.stdout))
    both = run(
        "query", str(indexed / "chelsea.jpg"), str(indexed / "coffee.jpg"), "--json", cwd=indexed
    )
    paths = [h["path"] for h in json.loads(both.stdout)]
    assert str(indexed / "chelsea.jpg") not in paths and str(indexed / "coffee.jpg") not in paths


def test_captions_status_and_remove(indexed: Path) -> None:
    caps = json.loads(run("captions", str(indexed / "chelsea.jpg"), "--json", cwd=indexed).stdout)
    assert len(caps) == 20 and "cat" in caps[0]["caption"]
    status = json.loads(run("status", "--json", cwd=indexed).stdout)
    assert status["images"] == 8 and status["model"] == "offline" and status["top_n"] == 20
    assert status["root"] == str(indexed) and status["size_bytes"] > 0
    human = run("status", cwd=indexed).stdout
    assert "model:     offline" in human and "images:    8" in human
    assert json.loads(run("remove", str(indexed / "coins.jpg"), "--json", cwd=indexed).stdout) == {
        "removed": 1
    }
    assert json.loads(run("status", "--json", cwd=indexed).stdout)["images"] == 7
    assert (indexed / "coins.jpg").exists()  # the file itself stays


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "missing.jpg"], "missing.jpg: no such file"),
        (["query", "notes.txt"], "notes.txt: not an image"),
        (["query"], "give one or more query images, or --text"),
        (["query", "chelsea.jpg", "-k", "0"], "-k must be at least 1"),
        (["captions", "."], "is a folder, not an image"),
        (["remove", "nothing-here.jpg"], "is not in the index"),
        (["index", "no-such-folder"], "no-such-folder: no such folder"),
        (["index", ".", "--model", "some/other-model"], "made with model 'offline'"),
        (["index", ".", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_input_gets_one_clear_line_and_a_nonzero_exit(
    indexed: Path, args: list[str], message: str
) -> None:
    (indexed / "notes.txt").write_text("hello")
    before = (indexed / ".imgsearch" / "index.db").read_bytes()
    result = run(*args, cwd=indexed)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert run("status", "--json", cwd=indexed).exit_code == 0
    assert len((indexed / ".imgsearch" / "index.db").read_bytes()) >= len(before) // 2


def test_missing_empty_and_corrupt_index(tmp_path: Path, small_bank: Path) -> None:
    result = run("query", "x.jpg", cwd=tmp_path)
    assert result.exit_code == 1 and "no index in" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        run(
            "index", str(empty), "--model", "offline", "--captions", str(small_bank), "-q"
        ).exit_code
        == 0
    )
    sample("coffee").save(tmp_path / "q.jpg")
    result = run("query", str(tmp_path / "q.jpg"), cwd=empty)
    assert result.exit_code == 1 and "has no images yet" in result.stderr
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    result = run("status", "--db", str(bad))
    assert result.exit_code == 1 and "cannot open the index" in result.stderr


def test_wrong_options_are_usage_errors(indexed: Path) -> None:
    result = run("query", "chelsea.jpg", "--device", "tpu", cwd=indexed)
    assert result.exit_code == 2 and "Invalid value" in result.stderr


def test_automatic_model_choice_says_why_on_stderr(photos: Path, small_bank: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch.cli",
            "index",
            str(photos),
            "--captions",
            str(small_bank),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == 8  # stdout carries only the result
    assert "using the offline model" in done.stderr and "HF_HUB_OFFLINE" in done.stderr


def test_compare_scores_a_pair_under_every_method(indexed: Path, tmp_path: Path) -> None:
    crop = tmp_path / "crop.jpg"
    sample("chelsea").crop((50, 20, 350, 280)).save(crop)
    result = run("compare", str(indexed / "chelsea.jpg"), str(crop), "--json", cwd=indexed)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    every = ["caption", "caption_avg", "image", "hybrid", "concepts", "concept_hybrid"]
    every += ["ssim", "fsim"]
    assert list(report["methods"]) == every
    for values in report["methods"].values():
        assert values["similar"] == (values["score"] >= values["tau"])
    assert report["methods"]["image"]["score"] > 0.8  # a crop of the same photo
    assert report["shared"] and all(
        s in [c["text"] for c in report["captions_a"]] for s in report["shared"]
    )
    far = run(
        "compare", str(indexed / "chelsea.jpg"), str(indexed / "coffee.jpg"), "--json", cwd=indexed
    )
    assert json.loads(far.stdout)["methods"]["image"]["score"] < report["methods"]["image"]["score"]
    text = run(
        "compare",
        str(indexed / "chelsea.jpg"),
        str(crop),
        "--methods",
        "caption,ssim",
        "--tau",
        "0.01",
        cwd=indexed,
    )
    assert "caption" in text.stdout and "similar" in text.stdout and "fsim" not in text.stdout


def test_compare_without_an_index_uses_a_throwaway_one(tmp_path: Path) -> None:
    sample("coffee").save(tmp_path / "a.jpg")
    sample("coffee").rotate(3).save(tmp_path / "b.jpg")
    result = run(
        "compare",
        "a.jpg",
        "b.jpg",
        "--methods",
        "caption,image",
        "--model",
        "offline",
        "--json",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["methods"]["caption"]["similar"] is True
    assert not (tmp_path / ".imgsearch").exists()


def test_query_by_method(indexed: Path) -> None:
    for method in ["caption", "caption_avg", "image", "hybrid", "concepts", "concept_hybrid"]:
        result = run(
            "query", str(indexed / "chelsea.jpg"), "--method", method, "--json", cwd=indexed
        )
        assert result.exit_code == 0 and len(json.loads(result.stdout)) == 7
    bad = run("query", "--text", "cat", "--method", "image", cwd=indexed)
    assert bad.exit_code == 1 and "do not share a space with texts" in bad.stderr


def test_a_reader_that_goes_away_gets_no_traceback(indexed: Path) -> None:
    """`imgsearch status | head -0`: the pipe closes before the result is written."""
    child = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "status", "--json"],
        cwd=indexed,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()  # long before the interpreter has even imported imgsearch
    _, err = child.communicate(timeout=120)
    assert child.returncode == 141, err
    assert b"Traceback" not in err and b"error" not in err, err
