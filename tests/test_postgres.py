"""PostgreSQL storage: the real CLI against a real server (tests/pg.py), compared with the
same commands on SQLite; migrations, concurrent writers, and one-line errors for bad URLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from imgsearch.api import Index
from imgsearch.cli import main
from imgsearch.errors import ImgsearchError
from imgsearch.storage import SCHEMA_VERSION, ImageRecord, Store, metadata
from tests.conftest import sample
from tests.pg import PASSWORD, PgServer, free_port

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert PASSWORD not in result.output + result.stderr, "the password was printed"
    return result


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def as_json(*args: str) -> object:
    return json.loads(ok(*args, "--json").stdout)


def index_args(photos: Path, db: str, tiny_clip: Path, bank: Path) -> list[str]:
    return ["index", str(photos), "--db", db, "--model", str(tiny_clip), "--captions", str(bank)]


def stored(db: str | Path) -> dict[str, tuple]:
    """Every image as stored: path -> (image vector, caption vector, caption ids, scores)."""
    store = Store.open(db)
    try:
        out = {}
        for path in store.file_states():
            record = store.get(path)
            assert record is not None
            out[path] = (
                record.image_vector,
                record.caption_vector,
                record.caption_ids,
                record.caption_scores,
            )
        return out
    finally:
        store.close()


def check_caption_lists(db: str, rows: dict[str, tuple]) -> None:
    """``Store.caption_lists`` both ways it reads: a page (an id range, one query) and a
    sample spread over the collection (calibration's, by ids), as ``stored`` has them; and
    ``Store.vectors_for``, the sample's vector columns read in one pass."""
    store = Store.open(db)
    try:
        ids = np.array(sorted(store.ids_under("")), dtype=np.int64)
        paths = store.paths(ids)
        picked = ids[::-2]  # out of order: returned in the order asked
        columns = store.vectors_for(["caption_vector", "image_vector"], picked)
        for k, i in enumerate(picked):
            image, caption, _, _ = rows[paths[int(i)]]
            assert np.array_equal(columns["image_vector"][k], image)
            assert np.array_equal(columns["caption_vector"][k], caption)
        for wanted in (ids, ids[[0, -1]]):
            caption_ids, scores = store.caption_lists(wanted)
            for i, got_ids, got_scores in zip(wanted, caption_ids, scores):
                _, _, want_ids, want_scores = rows[paths[int(i)]]
                assert got_ids.tolist() == want_ids
                np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
    finally:
        store.close()


def test_every_command_gives_the_same_results_as_on_sqlite(
    photos: Path, tiny_clip: Path, small_bank: Path, pg_url: str, tmp_path: Path, cache_dir: Path
) -> None:
    lite = str(tmp_path / "lite.db")
    # A first run saves the model's ONNX export, which later short runs embed with (1e-7
    # from the torch model's vectors): both runs compared here then find it saved.
    assert as_json(*index_args(photos, str(tmp_path / "first.db"), tiny_clip, small_bank))
    outputs = {}
    for name, db in (("pg", pg_url), ("lite", lite)):
        summary = as_json(*index_args(photos, db, tiny_clip, small_bank), "-q")
        assert summary["added"] == 8 and not summary["skipped"]
        outputs[name] = {
            "query": [
                as_json("query", str(photos / f"{p}.jpg"), "--db", db, "-k", "7", "--explain")
                for p in ("chelsea", "coffee", "rocket")
            ],
            "hybrid": as_json("query", str(photos / "horse.jpg"), "--db", db, "--method", "hybrid"),
            "text": as_json("query", "--text", "a cup of coffee", "--db", db, "-k", "3"),
            "captions": as_json("captions", str(photos / "chelsea.jpg"), "--db", db),
            "graph": json.loads(
                ok("graph", "--db", db, "--method", "image", "--tau", "0.5", "--json").stdout
            ),
            "duplicates": as_json("duplicates", "--db", db, "--threshold", "0.5"),
            "clusters": as_json("clusters", "--db", db, "--k", "3"),
        }
    assert outputs["pg"] == outputs["lite"]  # same ranking, same scores, same captions
    assert len(outputs["pg"]["query"][0]) == 7 and outputs["pg"]["graph"]["edges"]
    pg_rows, lite_rows = stored(pg_url), stored(lite)
    assert sorted(pg_rows) == sorted(lite_rows) and len(pg_rows) == 8
    for path, (image, caption, ids, scores) in pg_rows.items():
        assert np.array_equal(image, lite_rows[path][0])
        assert np.array_equal(caption, lite_rows[path][1])
        assert ids == lite_rows[path][2] and scores == lite_rows[path][3]
    for db, rows in ((pg_url, pg_rows), (lite, lite_rows)):
        check_caption_lists(db, rows)

    status = as_json("status", "--db", pg_url)
    assert status["images"] == 8 and status["root"] == str(photos)
    assert status["db"] == pg_url.replace(PASSWORD, "***")
    assert status["size_bytes"] > 0
    assert status["model"] == as_json("status", "--db", lite)["model"]
    assert "database:  postgresql+psycopg://imgsearch:***@" in ok("status", "--db", pg_url).stdout
    # The search index a URL database has no folder for is kept in the cache folder.
    assert list((cache_dir / "databases").glob("*/index.caption.vix"))

    assert as_json("remove", str(photos / "coins.jpg"), "--db", pg_url) == {"removed": 1}
    assert as_json("status", "--db", pg_url)["images"] == 7
    before = Store.open(pg_url)
    ids_before = {p: s.id for p, s in before.file_states().items()}
    generation = before.generation()
    before.close()
    sample("coffee").rotate(90).save(photos / "turned.jpg")
    again = as_json(*index_args(photos, pg_url, tiny_clip, small_bank), "-q")
    assert (again["added"], again["unchanged"], again["removed"]) == (2, 7, 0)
    after = Store.open(pg_url)
    try:
        states = after.file_states()
        assert len(states) == 9 and int(after.generation()) > int(generation)
        # Unchanged files were not embedded again: their rows are the very same.
        assert all(states[p].id == i for p, i in ids_before.items())
    finally:
        after.close()
    nothing = as_json(*index_args(photos, pg_url, tiny_clip, small_bank), "-q")
    assert (nothing["added"], nothing["unchanged"]) == (0, 9)


def test_migrations_make_the_schema_on_an_empty_database(pg_url: str, pg_server: PgServer) -> None:
    with pytest.raises(ImgsearchError, match="no index in .* yet"):
        Store.open(pg_url)  # reading an empty database creates nothing
    engine = sa.create_engine(pg_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        # Two processes opening the new database at once: one migrates, the other waits.
        stores: list[Store] = []
        threads = [
            threading.Thread(target=lambda: stores.append(Store.open(pg_url, create=True)))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(stores) == 3
        for store in stores:
            assert store.meta() == {"schema_version": str(SCHEMA_VERSION), "generation": "0"}
            store.close()
        inspector = sa.inspect(engine)
        assert sorted(inspector.get_table_names()) == sorted(metadata.tables)
        columns = {c["name"]: c for c in inspector.get_columns("images")}
        assert isinstance(columns["image_vector"]["type"], sa.LargeBinary)  # BYTEA
        assert "nextval" in columns["id"]["default"]  # ids come from a sequence
        uniques = inspector.get_unique_constraints("images")
        assert [u["column_names"] for u in uniques] == [["path"]]
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
        with pytest.raises(ImgsearchError, match="made by a newer imgsearch"):
            Store.open(pg_url)
    finally:
        engine.dispose()


def record(path: str, tag: float, dim: int = 4, top: int = 3) -> ImageRecord:
    """An image row whose every number is ``tag``: a torn write would mix two tags."""
    return ImageRecord(
        path=path,
        size=1,
        mtime_ns=1,
        hash=f"{path}-{tag}",
        width=2,
        height=3,
        image_vector=np.full(dim, tag, np.float32),
        caption_vector=np.full(dim, tag, np.float32),
        caption_ids=list(range(top)),
        caption_scores=[tag] * top,
    )


def test_concurrent_batch_writes_keep_one_row_per_file(pg_url: str) -> None:
    Store.open(pg_url, create=True).close()
    paths = [f"photo{i}.jpg" for i in range(10)]
    writers, batches = 3, 15
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        store = Store.open(pg_url)  # each writer its own connections, as separate processes
        try:
            start.wait()
            for batch in range(batches):
                store.put_images([record(p, writer * 100 + batch) for p in paths])
                store.mark_skipped("bad.jpg", writer, batch, "not an image")
                store.update_files([(store.file_states()["photo0.jpg"].id, "photo0.jpg", 1, 1)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    store = Store.open(pg_url)
    try:
        assert sorted(store.file_states()) == paths  # exactly one row per file
        assert store.generation() == str(writers * batches * 2)  # no bump lost
        assert list(store.skipped_files()) == ["bad.jpg"]
        ids, _, vectors = store.vectors("image_vector")
        captions = store.captions_of(ids)
        for image_id, vector in zip(ids, vectors):
            tag = vector[0]
            assert np.all(vector == tag)  # every row whole, from one batch
            assert [s for _, s in captions[int(image_id)]] == [tag] * 3
    finally:
        store.close()


def test_a_second_writer_is_told_another_is_running(
    photos: Path, tiny_clip: Path, small_bank: Path, pg_url: str
) -> None:
    ok(*index_args(photos, pg_url, tiny_clip, small_bank), "-q")
    sample("coffee").rotate(90).save(photos / "turned.jpg")
    store = Store.open(pg_url)
    with store.writer():
        busy = run(*index_args(photos, pg_url, tiny_clip, small_bank), "-q")
        removing = run("remove", str(photos / "coins.jpg"), "--db", pg_url)
        # Readers are never blocked.
        assert ok("status", "--db", pg_url, "--json").stdout
    store.close()
    for result in (busy, removing):
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr == (
            "imgsearch: error: another imgsearch process is updating "
            f"{pg_url.replace(PASSWORD, '***')}; wait for it to finish\n"
        )
    assert as_json("status", "--db", pg_url)["images"] == 8  # nothing was written
    assert as_json(*index_args(photos, pg_url, tiny_clip, small_bank), "-q")["added"] == 1

    # A writer that dies (kill -9) takes its lock with it: the server drops its session.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from imgsearch.storage import Store\n"
            "with Store.open(sys.argv[1]).writer():\n"
            "    print('locked', flush=True); time.sleep(600)",
            pg_url,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert run("remove", str(photos / "coins.jpg"), "--db", pg_url).exit_code == 1
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    wait_for_no_advisory_locks(pg_url)
    assert as_json("remove", str(photos / "coins.jpg"), "--db", pg_url) == {"removed": 1}


def wait_for_no_advisory_locks(url: str) -> None:
    """The server ends a dead client's session when it reads the closed socket: poll for it."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            for _ in range(600):
                if not conn.execute(query).scalar():
                    return
                conn.execute(sa.text("SELECT pg_sleep(0.05)"))
                conn.commit()
    finally:
        engine.dispose()
    raise AssertionError("the killed writer's advisory lock was never released")


def test_two_indexers_at_once_end_with_one_row_per_file(
    photos: Path, tiny_clip: Path, small_bank: Path, pg_url: str, pg_server: PgServer
) -> None:
    alone = pg_server.database()  # the same work by one writer, for the generation count
    for db in (alone, pg_url):
        Index.create(photos, db, str(tiny_clip), small_bank).close()
    with Index.open(alone) as ix:
        assert ix.add().added == 8
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def index() -> None:
        with Index.open(pg_url) as ix:
            ix.bank  # noqa: B018 - load before the race, so both reach add() together
            start.wait()
            try:
                outcomes.append(ix.add().added)
            except ImgsearchError as exc:
                outcomes.append(str(exc))

    threads = [threading.Thread(target=index) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each either indexed or was told another writer runs; the photos went in once.
    busy = [o for o in outcomes if isinstance(o, str)]
    assert all("another imgsearch process is updating" in o for o in busy)
    assert sorted(o for o in outcomes if isinstance(o, int)) in ([8], [0, 8])
    store = Store.open(pg_url)
    try:
        assert sorted(store.file_states()) == sorted(p.name for p in photos.iterdir())
        # The writer that lost the race changed nothing: the same count as one writer alone.
        reference = Store.open(alone)
        assert store.generation() == reference.generation()
        reference.close()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("make_url", "message"),
    [
        (lambda u, s: u.replace(PASSWORD, "not-the-password"), "password authentication failed"),
        (lambda u, s: u.replace(f":{s.port}/", f":{free_port()}/"), "Connection refused"),
        (lambda u, s: u.rsplit("/", 1)[0] + "/no_such_db", 'database "no_such_db" does not exist'),
        (lambda u, s: u.replace("postgresql+psycopg", "mysql"), "unsupported database mysql://"),
        (lambda u, s: u.replace("+psycopg", "+psycopg2"), "needs the psycopg2 package"),
        (lambda u, s: u.replace("+psycopg", "+nosuchdriver"), "unsupported PostgreSQL driver"),
        (lambda u, s: u.replace("postgresql+psycopg:", "::"), "cannot read the database URL"),
    ],
)
def test_a_bad_url_is_one_line_and_exit_1(
    make_url, message: str, pg_url: str, pg_server: PgServer, photos: Path
) -> None:
    if "psycopg2" in message:
        with pytest.raises(ImportError):  # this case needs psycopg2 to be absent
            __import__("psycopg2")
    url = make_url(pg_url, pg_server)
    for args in (["status", "--db", url], ["index", str(photos), "--db", url, "-q"]):
        result = run(*args)
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.startswith("imgsearch: error: ") and result.stderr.count("\n") == 1
        assert message in result.stderr and "Traceback" not in result.stderr
        assert "not-the-password" not in result.stderr
    assert not (photos / ".imgsearch").exists()
