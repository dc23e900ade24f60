"""An index made with an earlier packaged caption bank keeps working, and says how to get
the new one; an empty text query is its own mistake."""

from __future__ import annotations

from pathlib import Path

from imgsearch.captions import bank_digest, read_bank
from imgsearch.storage import Store
from tests.conftest import write_photos
from tests.test_cli import run


def test_an_index_made_with_an_earlier_packaged_bank_says_how_to_use_the_new_one(
    tmp_path: Path, small_bank: Path
) -> None:
    folder = tmp_path / "photos"
    write_photos(folder, ["chelsea", "coffee", "rocket"])
    first = run("index", str(folder), "--model", "offline", "--captions", str(small_bank))
    assert first.exit_code == 0 and "caption bank" not in first.stderr
    store = Store.open(folder / ".imgsearch" / "index.db")
    # As an index made by an earlier release with its packaged bank records itself.
    store.set_meta({"captions": "default", "captions_digest": "0123456789abcdef"})
    store.close()
    again = run("index", str(folder))
    assert again.exit_code == 0, again.output
    assert "this release's packaged bank has changed" in again.stderr
    assert "--db NEW" in again.stderr
    query = run("query", str(folder / "coffee.jpg"), "--json", cwd=folder)
    assert query.exit_code == 0  # it keeps working with the bank it was made with
    store = Store.open(folder / ".imgsearch" / "index.db")
    store.set_meta({"captions_digest": bank_digest(read_bank(None)[1])})
    store.close()
    assert "packaged bank has changed" not in run("index", str(folder)).stderr


def test_an_empty_text_query_is_its_own_mistake(tmp_path: Path, small_bank: Path) -> None:
    folder = tmp_path / "photos"
    write_photos(folder, ["chelsea", "coffee"])
    assert run("index", str(folder), "--model", "offline", "--captions", str(small_bank), "-q")
    for text in ("", "   "):
        done = run("query", "--text", text, cwd=folder)
        assert done.exit_code == 1 and "the query text is empty" in done.stderr
    both = run("query", str(folder / "coffee.jpg"), "--text", "a cup", cwd=folder)
    assert both.exit_code == 0, both.output  # a photo and a text: one combined query
    neither = run("query", cwd=folder)
    assert neither.exit_code == 1 and "give one or more query images" in neither.stderr
