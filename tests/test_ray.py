"""Indexing on Ray, on a real local cluster: the same stored results as one process, worker
processes that die mid-run, lists of files, and the errors a user can meet."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from imgsearch.captions import DEFAULT_SETTINGS
from imgsearch.cli import main
from imgsearch.distributed import HOLD_ENV, KILL_ENV, start_local_cluster
from imgsearch.models import preprocess_for as model_preprocess
from imgsearch.storage import Store
from tests.conftest import sample

IMGSEARCH = str(Path(sys.executable).with_name("imgsearch"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray cluster of 2 CPUs for the module, on loopback as imgsearch's own. Yields the
    folder where a test arms a worker's death (see distributed._die_if_armed)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        pytest.fail("Ray is not installed: pip install -e '.[test]' (the test extra has Ray)")
    kill = tmp_path_factory.mktemp("ray-kill")
    start_local_cluster(
        ray,
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,  # as imgsearch's own connection: stdout carries only results
        runtime_env={"env_vars": {KILL_ENV: str(kill)}},
    )
    yield kill
    ray.shutdown()


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def index(photos: Path, db: Path, clip: Path, bank: Path, *extra: object) -> dict:
    args = ("--db", db, "--model", clip, "--captions", bank, "-q", "--json")
    result = run("index", photos, *args, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows(db: Path) -> dict[str, int]:
    """Rows per path in the images table, and caption rows per image, read with sqlite3."""
    with sqlite3.connect(db) as conn:
        images = dict(conn.execute("SELECT path, COUNT(*) FROM images GROUP BY path").fetchall())
        orphans = conn.execute(
            "SELECT COUNT(*) FROM image_captions WHERE image_id NOT IN (SELECT id FROM images)"
        ).fetchone()[0]
    assert orphans == 0
    return images


def test_ray_stores_what_one_process_stores_even_when_workers_die(
    cluster: Path, photos: Path, tiny_clip: Path, small_bank: Path, tmp_path: Path
) -> None:
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (photos / "space").mkdir()
    sample("rocket").rotate(90, expand=True).save(photos / "space" / "rocket-turned.jpg")
    # The first decode task and the first model-worker call of the Ray run end their process
    # after doing their work, before handing it on.
    for stage in ("decode", "embed"):
        (cluster / stage).touch()
    one, distributed = tmp_path / "one.db", tmp_path / "ray.db"
    single = index(photos, one, tiny_clip, small_bank, "--batch-size", 3)
    spread = index(photos, distributed, tiny_clip, small_bank, "--batch-size", 3, "--ray")
    assert not (cluster / "decode").exists() and not (cluster / "embed").exists(), "no death"
    del single["seconds"], spread["seconds"]
    assert single == spread
    assert (spread["added"], [s["path"] for s in spread["skipped"]]) == (9, ["broken.jpg"])

    assert_same_index(one, distributed, small_bank, 9)

    again = index(photos, distributed, tiny_clip, small_bank, "--ray")  # nothing changed
    assert (again["added"], again["unchanged"], again["removed"]) == (0, 9, 0)


def assert_same_index(one: Path, distributed: Path, bank: Path, images: int) -> None:
    """The Ray run's database holds what the single-process run's does: one row per file,
    every caption row belonging to one, the same captions, vectors equal to 1e-4."""
    assert rows(distributed) == {p: 1 for p in rows(one)} and len(rows(one)) == images
    with sqlite3.connect(distributed) as conn:
        per_image = conn.execute("SELECT COUNT(*) FROM image_captions GROUP BY image_id").fetchall()
    top_n = min(DEFAULT_SETTINGS.top_n, len(bank.read_text().splitlines()))
    assert [n for (n,) in per_image] == [top_n] * images

    a, b = Store.open(one), Store.open(distributed)
    try:
        assert a.skipped_files() == b.skipped_files()
        for path in a.file_states():
            x, y = a.get(path), b.get(path)
            facts = ("size", "mtime_ns", "hash", "width", "height")
            assert [getattr(x, f) for f in facts] == [getattr(y, f) for f in facts]
            assert x.caption_ids == y.caption_ids, path
            np.testing.assert_allclose(x.caption_scores, y.caption_scores, atol=1e-4)
            np.testing.assert_allclose(x.image_vector, y.image_vector, atol=1e-4)
            np.testing.assert_allclose(x.caption_vector, y.caption_vector, atol=1e-4)
    finally:
        a.close()
        b.close()


def test_auto_starts_a_cluster_that_listens_on_loopback_only(
    photos: Path, tiny_clip: Path, small_bank: Path, tmp_path: Path
) -> None:
    one, distributed = tmp_path / "one.db", tmp_path / "ray.db"
    single = index(photos, one, tiny_clip, small_bank, "--batch-size", 3)
    # A fresh process (this one may hold a Ray connection) whose Ray folder is its own, so no
    # cluster is there to join; the folder is short, as Ray's socket paths live below it.
    ray_tmp = tempfile.mkdtemp(prefix="imgsearch-ray-")
    hold = tmp_path / "hold"  # model workers wait at their first batch while it exists
    hold.touch()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_TMPDIR": ray_tmp, HOLD_ENV: str(hold)}
    args = ["--db", distributed, "--model", tiny_clip, "--captions", small_bank, "--batch-size", 3]
    command = [IMGSEARCH, "index", photos, *args, "-q", "--json", "--ray"]
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        spread = subprocess.Popen([str(c) for c in command], env=env, stdout=stdout, stderr=stderr)
    try:
        workers = held_workers(spread, hold, err, timeout=180)
        root = psutil.Process(spread.pid)
        sockets = listening([root, *root.children(recursive=True)])
        names = {name for name, _ in sockets.values()}
        assert {"gcs_server", "raylet"} <= names, f"the run started no cluster of its own: {names}"
        assert workers <= sockets.keys(), "the model workers were not seen listening"
        outside = [
            f"{name} (pid {pid}) on {ip} port {port}"
            for pid, (name, bound) in sockets.items()
            for ip, port in bound
            if not loopback(ip)
        ]
        assert outside == []

        hold.unlink()
        assert spread.wait(timeout=180) == 0, err.read_text()
    finally:
        hold.unlink(missing_ok=True)
        if spread.poll() is None:
            spread.kill()
            spread.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    summary = json.loads(out.read_text())
    del single["seconds"], summary["seconds"]
    assert summary == single and summary["added"] == 8
    assert_same_index(one, distributed, small_bank, 8)


def held_workers(run: subprocess.Popen, hold: Path, stderr: Path, timeout: float) -> set[int]:
    """The pids of the model workers waiting at their first batch (distributed._hold_if_asked);
    fails if none comes within ``timeout`` seconds or the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {int(p.suffix[1:]) for p in hold.parent.glob(f"{hold.name}.*")}
        if pids:
            return pids
        if run.poll() is not None:
            pytest.fail(
                f"the run ended ({run.returncode}) before a model worker was seen: "
                f"{stderr.read_text()}"
            )
        time.sleep(0.2)
    pytest.fail(f"no model worker reached its first batch within {timeout:g} s")


def listening(processes: list[psutil.Process]) -> dict[int, tuple[str, list[tuple[str, int]]]]:
    """pid: (name, [(address, port)]) of each process with a listening TCP socket."""
    found = {}
    for process in processes:
        try:
            name = process.name()
            bound = [c.laddr for c in process.net_connections("inet") if c.status == "LISTEN"]
        except psutil.NoSuchProcess:
            continue  # a short-lived task worker that ended meanwhile
        if bound:
            found[process.pid] = (name, [(a.ip, a.port) for a in bound])
    return found


def loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1 (0.0.0.0 and :: are not); an IPv4-mapped IPv6 address, the form
    gRPC servers on 127.0.0.1 show, by its IPv4 address."""
    address = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_files_from_limits_the_run_and_keeps_unlisted_files(
    cluster: Path, photos: Path, tiny_clip: Path, small_bank: Path, tmp_path: Path
) -> None:
    db = tmp_path / "index.db"
    index(photos, db, tiny_clip, small_bank)
    (photos / "coins.jpg").unlink()  # listed: dropped from the index
    (photos / "horse.jpg").unlink()  # not listed: kept until a full run
    sample("coffee").transpose(0).save(photos / "new.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\nnew.jpg\n\n{photos / 'coins.jpg'}\nnot-there.jpg\n")
    summary = index(photos, db, tiny_clip, small_bank, "--files-from", listing, "--ray")
    assert (summary["added"], summary["removed"], summary["unchanged"]) == (1, 1, 0)
    assert [s["path"] for s in summary["skipped"]] == ["not-there.jpg"]
    assert "horse.jpg" in rows(db) and "coins.jpg" not in rows(db) and "new.jpg" in rows(db)

    outside = tmp_path / "outside.txt"
    outside.write_text(f"new.jpg\n{tmp_path / 'elsewhere.jpg'}\n../up.jpg\n")
    before = rows(db)
    result = run("index", photos, "--db", db, "--files-from", outside, "-q")
    assert result.exit_code == 1
    assert result.stderr == (
        f"imgsearch: error: 2 listed file(s) are not inside the indexed folder {photos}, "
        f"e.g. {tmp_path / 'elsewhere.jpg'}\n"
    )
    missing = run("index", photos, "--db", db, "--files-from", tmp_path / "nope.txt")
    assert missing.exit_code == 1 and missing.stderr.startswith(
        f"imgsearch: error: cannot read the list of files {tmp_path / 'nope.txt'}: "
    )
    assert rows(db) == before

    full = index(photos, db, tiny_clip, small_bank)  # a run over the folder drops horse.jpg
    assert (full["removed"], full["unchanged"]) == (1, 7)


def test_too_many_cpu_workers_is_one_line_and_changes_nothing(
    cluster: Path, photos: Path, tiny_clip: Path, small_bank: Path, tmp_path: Path
) -> None:
    db = tmp_path / "index.db"
    args = ("index", photos, "--db", db, "--model", tiny_clip, "--captions", small_bank, "-q")
    result = run(*args, "--ray", "--ray-workers", 2)
    assert result.exit_code == 1
    assert result.stderr == (
        "imgsearch: error: the Ray cluster has 2 CPUs and no GPU: 2 model worker(s) on CPUs "
        "would leave none for decoding; use --ray-workers 1 or a larger cluster\n"
    )
    assert rows(db) == {}
    assert run(*args, "--ray-workers", 1).exit_code == 1  # only with --ray


def test_an_unreachable_cluster_is_one_line(
    photos: Path, tiny_clip: Path, small_bank: Path, tmp_path: Path
) -> None:
    db = tmp_path / "index.db"
    args = ["--db", db, "--model", tiny_clip, "--captions", small_bank, "-q"]
    command = [IMGSEARCH, "index", photos, *args, "--ray", "ray://127.0.0.1:9"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("imgsearch: error: cannot reach the Ray cluster at ray://127.0")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not db.exists()  # checked before anything was made


def test_without_ray_installed_the_cli_says_how_to_get_it(photos: Path, tmp_path: Path) -> None:
    # A None entry in sys.modules makes 'import ray' fail as if Ray were not installed.
    code = "import sys; sys.modules['ray'] = None; from imgsearch.cli import main; main()"
    command = [sys.executable, "-c", code, "index", photos, "--db", tmp_path / "x.db", "--ray"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == (
        "imgsearch: error: distributed indexing needs Ray: pip install 'imgsearch[ray]'\n"
    )
    assert not (tmp_path / "x.db").exists()


def test_decode_tasks_get_the_models_preprocessing_without_its_weights(tiny_clip: Path) -> None:
    from imgsearch.models import load_model, pick_device

    loaded = load_model(str(tiny_clip), pick_device("cpu"))
    assert model_preprocess(str(tiny_clip)) == loaded.preprocess
    assert model_preprocess(str(tiny_clip.parent / "no-model-here")) is None
