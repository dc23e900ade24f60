"""Faults around the files derived from the database, the first run and moving copies
(the reliability issue's cases 1, 2, 3 and 12): each ends well, through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imgsearch.storage import Store
from tests.conftest import SAMPLES, sample, write_photos
from tests.test_cli import run


def index_folder(folder: Path, bank: Path) -> None:
    done = run("index", str(folder), "--model", "offline", "--captions", str(bank), "-q")
    assert done.exit_code == 0, done.output


def query(folder: Path, photo: Path) -> list[dict]:
    done = run("query", str(photo), "-k", "7", "--method", "caption", "--json", cwd=folder)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def expected_scores(folder: Path, photo: Path) -> dict[str, float]:
    """Caption scores computed from the database alone: the stored caption vectors, centred
    on their own mean, as cosines with the query photo's."""
    store = Store.open(folder / ".imgsearch" / "index.db")
    try:
        _, paths, vectors = store.vectors("caption_vector")
    finally:
        store.close()
    shifted = vectors - vectors.mean(axis=0)
    shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
    mine = shifted[paths.index(photo.relative_to(folder).as_posix())]
    return {str(folder / p): float(v @ mine) for p, v in zip(paths, shifted)}


def assert_scores_follow_the_database(folder: Path, photo: Path) -> None:
    expected = expected_scores(folder, photo)
    for hit in query(folder, photo):
        assert hit["score"] == pytest.approx(expected[hit["path"]], abs=1e-4), hit["path"]


def test_a_new_database_never_reuses_an_old_ones_derived_files(
    tmp_path: Path, small_bank: Path
) -> None:
    folder = tmp_path / "photos"
    photos = write_photos(folder)
    index_folder(folder, small_bank)
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (folder / ".imgsearch" / name).unlink(missing_ok=True)
    # The same names, other photos: each file now holds the next sample's picture.
    for name, other in zip(SAMPLES, SAMPLES[1:] + SAMPLES[:1]):
        sample(other).save(photos[name], quality=90)
    index_folder(folder, small_bank)
    assert_scores_follow_the_database(folder, photos["chelsea"])


@pytest.mark.parametrize("damage", ["flip", "truncate", "edit"])
def test_a_damaged_or_edited_means_file_is_rebuilt(
    tmp_path: Path, small_bank: Path, damage: str
) -> None:
    folder = tmp_path / "photos"
    photos = write_photos(folder)
    index_folder(folder, small_bank)
    before = query(folder, photos["coffee"])
    means = folder / ".imgsearch" / "index.db.means.npz"
    data = bytearray(means.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        means.write_bytes(bytes(data))
    elif damage == "truncate":
        means.write_bytes(bytes(data[: len(data) // 2]))
    else:  # a valid file, the same stamp, other values
        with np.load(means) as saved:
            fields = {name: saved[name] for name in saved.files}
        fields["caption"] = fields["caption"] + np.float32(0.5)
        with open(means, "wb") as f:
            np.savez(f, **fields)
    assert query(folder, photos["coffee"]) == before
    assert_scores_follow_the_database(folder, photos["coffee"])


def test_two_first_runs_one_stops_and_the_index_stays_whole(
    tmp_path: Path, small_bank: Path
) -> None:
    folder = tmp_path / "photos"
    write_photos(folder)
    other_bank = tmp_path / "six.txt"
    other_bank.write_text("a cat\na dog\na cup\na rocket\na horse\na coin\n")
    command = [sys.executable, "-m", "imgsearch.cli", "index", str(folder), "--model", "offline"]
    first = subprocess.Popen(
        [*command, "--captions", str(small_bank), "-q"], stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.3)
    second = subprocess.Popen(
        [*command, "--captions", str(other_bank), "-q"], stderr=subprocess.PIPE, text=True
    )
    results = [(p.wait(timeout=600), p.stderr.read()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    # The loser either met the winner's lock, or (the winner having made the index
    # already) the winner's bank: both are refusals in one line that change nothing.
    refusals = ("another imgsearch process is updating", "made with the caption bank")
    assert any(r in loser for r in refusals) and "Traceback" not in loser, loser
    assert len(loser.strip().splitlines()) == 1, loser
    winner_bank = small_bank if results[0][0] == 0 else other_bank
    store = Store.open(folder / ".imgsearch" / "index.db")
    try:
        texts, _ = store.load_bank()
        assert store.count() == len(SAMPLES)
    finally:
        store.close()
    assert texts == [t for t in winner_bank.read_text().splitlines() if t]
    for args in (["captions", str(folder / "coffee.jpg")], ["clusters", "--k", "2"]):
        done = run(*args, "--json", cwd=folder)
        assert done.exit_code == 0, done.output
    assert query(folder, folder / "chelsea.jpg")


def test_move_to_that_stops_half_way_reports_every_move_and_keeps_the_index(
    tmp_path: Path, small_bank: Path
) -> None:
    folder = tmp_path / "photos"
    write_photos(folder, ["chelsea", "coffee", "rocket"])
    write_photos(folder / "sub", ["horse", "camera"])
    for source, copy in (("chelsea", "chelsea-small.jpg"), ("horse", "sub/horse-small.jpg")):
        picture = sample(source)
        picture.resize((picture.width // 2, picture.height // 2)).save(folder / copy, quality=85)
    index_folder(folder, small_bank)
    target = tmp_path / "copies"
    target.mkdir()
    (target / "sub").write_text("a file where a folder would go")
    done = run("duplicates", "--move-to", str(target), "--yes", cwd=folder)
    assert done.exit_code == 1, done.output
    lines = [line for line in done.stderr.splitlines() if line]
    moves = [line for line in lines if line.startswith("imgsearch: moved ")]
    assert len(moves) == 1 and "chelsea-small.jpg" in moves[0]
    assert "stopped moving copies" in lines[-1] and "Traceback" not in done.stderr
    assert (target / "chelsea-small.jpg").is_file() and (folder / "sub/horse-small.jpg").is_file()
    again = run("index", str(folder), "--json", cwd=folder)
    summary = json.loads(again.stdout)
    assert (summary["added"], summary["removed"], summary["moved"]) == (0, 0, 0)
    shutil.rmtree(target)
