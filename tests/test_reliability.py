"""The reliability issue's cases, as a user meets them: real files (FIFOs, /dev/zero, extreme
PNGs, 16-bit images, names that are not UTF-8), real SQLite files (damaged, read-only, on a
full disk), the command line in a subprocess or click's runner, and an unprivileged user
where permissions matter (CI runs as root, which no permission stops)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import math
import os
import pwd
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

import imgsearch
from imgsearch import ImgsearchError, Index
from imgsearch.files import decode
from imgsearch.storage import Store
from tests.conftest import sample
from tests.test_cli import run

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid)
BAD_NAME = os.fsdecode(b"x\xff.jpg")  # not valid UTF-8: Python holds it with a surrogate
SCRIPT_NAME = "<!--<script>x.jpg"
GB = 1 << 30
# Peak RSS of a child, from the kernel's own count, printed by a wrapper process after the
# child ends: RUSAGE_CHILDREN of a process whose only child is the command.
MEASURE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "print(f'PEAK {peak}', file=sys.stderr); sys.exit(done.returncode)"
)


class Done:
    def __init__(self, returncode: int, stdout: str, stderr: str, peak: int = 0):
        self.returncode, self.stdout, self.stderr, self.peak = returncode, stdout, stderr, peak

    def one_line(self) -> str:
        """stderr, which must be exactly one line."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert "Traceback" not in self.stderr and "sqlalche" not in self.stderr, self.stderr
        return lines[0]


def cli(
    *args: str,
    as_nobody: bool = False,
    measure: bool = False,
    timeout: float = 180,
    env: dict | None = None,
    preexec_fn=None,  # noqa: ANN001
    max_rss: int = 0,
    cwd: Path | None = None,
) -> Done:
    """``python -m imgsearch.cli ARGS`` in a subprocess, as a user runs it. ``max_rss``: the
    child is killed once it holds more memory (so a test of an unbounded read fails, not
    the machine)."""
    command = [sys.executable, "-m", "imgsearch.cli", *args]
    if measure:
        command = [sys.executable, "-c", MEASURE, *command]
    extra = {}
    if as_nobody:
        extra = {"user": NOBODY.pw_uid, "group": NOGROUP.gr_gid, "extra_groups": []}
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
        cwd=cwd,
        **extra,
    )
    if max_rss:
        watch = psutil.Process(child.pid)
        while child.poll() is None:
            with contextlib.suppress(psutil.Error):
                held = [watch, *watch.children(recursive=True)]
                if max(p.memory_info().rss for p in held) > max_rss:
                    for process in reversed(held):
                        process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(0.1)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    peak = 0
    if measure:
        last = err.rstrip().rsplit("\n", 1)
        peak = int(last[-1].split()[1]) * 1024
        err = last[0] + "\n" if len(last) == 2 else ""
    return Done(child.returncode, out, err, peak)


def photo(folder: Path, name: str, file: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (file or f"{name}.jpg")
    sample(name).save(path, "JPEG", quality=90)
    return path


def chmod_tree(root: Path, folders: int, files: int) -> None:
    for here, _, names in os.walk(root):
        os.chmod(here, folders)
        for name in names:
            path = Path(here) / name
            if not path.is_symlink() and stat.S_ISREG(path.lstat().st_mode):
                os.chmod(path, files)


def chown_tree(root: Path) -> None:
    for here, _, names in os.walk(root):
        os.chown(here, NOBODY.pw_uid, NOGROUP.gr_gid)
        for name in names:
            os.chown(Path(here) / name, NOBODY.pw_uid, NOGROUP.gr_gid, follow_symlinks=False)


# --- shared folders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(cache_dir: Path) -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's own are root's, mode 0700)."""
    base = Path(tempfile.mkdtemp(prefix="imgsearch-reliability-"))
    base.chmod(0o755)
    yield base
    for here, dirs, _ in os.walk(base):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(Path(here) / name, 0o755)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def bank(work: Path, small_bank: Path) -> Path:
    path = work / "captions.txt"
    shutil.copyfile(small_bank, path)
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def plain(work: Path, bank: Path) -> tuple[Path, int]:
    """Six photos (two in sub/), indexed: the folder and the indexing run's peak memory."""
    folder = work / "plain"
    for name in ["chelsea", "coffee", "rocket", "astronaut"]:
        photo(folder, name)
    for name in ["coins", "horse"]:
        photo(folder / "sub", name)
    done = cli("index", str(folder), "--model", "offline", "--captions", str(bank), "-q",
               measure=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder, done.peak


@pytest.fixture(scope="module")
def extreme(work: Path, bank: Path) -> tuple[Path, Done]:
    """Three photos (one named like HTML) beside two extreme PNGs, indexed once (--json),
    with the run's peak memory."""
    folder = work / "extreme"
    photo(folder, "chelsea")
    photo(folder, "coffee")
    photo(folder, "rocket", SCRIPT_NAME)
    Image.new("L", (20000, 1), 128).save(folder / "thin.png")  # about 100 bytes
    Image.new("L", (12000, 12000)).save(folder / "zeros.png")  # 144 megapixels, 140 KB
    done = cli("index", str(folder), "--model", "offline", "--captions", str(bank), "--json",
               measure=True, max_rss=10 * GB)  # fmt: skip
    return folder, done


@pytest.fixture(scope="module")
def traps(work: Path, bank: Path) -> tuple[Path, Done]:
    """Two photos among files that must never be read: a FIFO, a link to /dev/zero, a
    sparse file over 1 GB, and a photo whose name is not UTF-8; indexed once (--json)."""
    folder = work / "traps"
    photo(folder, "chelsea")
    photo(folder, "coffee")
    photo(folder, "astronaut", BAD_NAME)
    os.mkfifo(folder / "fifo.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    with open(folder / "huge.jpg", "wb") as f:  # sparse: over 1 GB, no disk used
        f.truncate(GB + 1)
    done = cli("index", str(folder), "--model", "offline", "--captions", str(bank), "--json",
               max_rss=4 * GB)  # fmt: skip
    return folder, done


def skipped(done: Done) -> dict[str, str]:
    assert done.returncode == 0, done.stderr
    return {s["path"]: s["reason"] for s in json.loads(done.stdout)["skipped"]}


def db_of(folder: Path) -> Path:
    return folder / ".imgsearch" / "index.db"


def copy_of(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def unprivileged(work: Path) -> Iterator[dict]:
    """The environment for commands run as 'nobody', who must be able to import this
    Python and imgsearch: where a folder on the way is closed to others (a clone under
    /root), it is opened for traversal (o+x) for the module's tests, then closed again."""
    home = work / "nobody-home"
    home.mkdir()
    os.chown(home, NOBODY.pw_uid, NOGROUP.gr_gid)
    env = {"HOME": str(home), "IMGSEARCH_CACHE_DIR": str(home / "cache"),
           "HF_HOME": str(home / "hf")}  # fmt: skip
    probe = [sys.executable, "-c", "import imgsearch.cli, torch"]
    ids = {"user": NOBODY.pw_uid, "group": NOGROUP.gr_gid, "extra_groups": []}

    def importable() -> str:
        try:
            done = subprocess.run(probe, env={**os.environ, **env}, capture_output=True, **ids)
        except OSError as exc:  # the interpreter itself is out of reach
            return str(exc)
        return done.stderr.decode() if done.returncode else ""

    opened: list[tuple[Path, int]] = []
    if importable():
        needed = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)),
                  Path(imgsearch.__file__).resolve().parent}  # fmt: skip
        for path in needed:
            for folder in path.parents:
                mode = folder.stat().st_mode
                if not mode & stat.S_IXOTH:
                    opened.append((folder, mode))
                    folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    problem = importable()
    try:
        assert not problem, f"nobody cannot import imgsearch: {problem}"
        yield env
    finally:
        for folder, mode in reversed(opened):
            folder.chmod(stat.S_IMODE(mode))


# --- 4: a damaged database -------------------------------------------------------------


def flip_page(db: Path, number: int) -> None:
    """Invert the first 64 bytes of page ``number`` (-1: the last): its header, as a bad
    sector would."""
    with sqlite3.connect(db) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(db.read_bytes())
    start = (number - 1) * size if number > 0 else len(data) - size
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    db.write_bytes(bytes(data))


def test_4_a_damaged_database_is_said_once_never_unchanged(plain: tuple, work: Path) -> None:
    # A page that a no-change run never reads: the image captions.
    folder = copy_of(plain[0], work / "damaged-mid")
    with sqlite3.connect(db_of(folder)) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'image_captions'"
        ).fetchone()
    flip_page(db_of(folder), root)
    done = run("index", str(folder), "-q")
    assert "unchanged" not in done.stdout
    assert done.exit_code == 1
    line = Done(1, "", done.stderr).one_line()
    assert "damaged" in line and "rebuild" in line and str(db_of(folder)) in line
    caps = run("captions", str(folder / "coffee.jpg"), "--db", str(db_of(folder)))
    assert caps.exit_code == 1
    assert "damaged" in Done(1, "", caps.stderr).one_line()
    # The last page of the file.
    tail = copy_of(plain[0], work / "damaged-tail")
    flip_page(db_of(tail), -1)
    done = run("index", str(tail), "-q")
    assert done.exit_code == 1 and "unchanged" not in done.stdout
    assert "damaged" in Done(1, "", done.stderr).one_line()


# --- 5: extreme images -----------------------------------------------------------------


def test_5_extreme_images_are_skipped_from_the_header_with_bounded_memory(
    extreme: tuple, plain: tuple
) -> None:
    folder, done = extreme
    # No single file may add more than about 1.5 GB to the peak of an ordinary run.
    assert done.peak - plain[1] < 1.5 * GB, (done.peak, plain[1])
    reasons = skipped(done)
    assert reasons["thin.png"].startswith("over the limit: 20000x1")
    assert "--max-aspect" in reasons["thin.png"]
    assert reasons["zeros.png"].startswith("over the limit: 12000x12000 is 144 megapixels")
    query = cli("query", str(folder / "thin.png"), "--db", str(db_of(folder)), measure=True)
    assert query.returncode == 1 and "over the limit" in query.one_line()
    assert query.peak < 1.5 * GB
    # The options, recorded with the index.
    again = run("index", str(folder), "--max-pixels", "100M", "--max-aspect", "50",
                "--max-file-size", "1GB", "-q")  # fmt: skip
    assert again.exit_code == 0, again.output
    bad = run("index", str(folder), "--max-pixels", "lots", "-q")
    assert bad.exit_code == 1 and "bad pixel count" in Done(1, "", bad.stderr).one_line()


def asgi(app, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:  # noqa: ANN001
    """One request straight into the ASGI app, as the server hands it over: an error the
    app raises here is what uvicorn prints as a traceback."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 9), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(payload)


def test_5_web_upload_of_an_extreme_image_is_refused(extreme: tuple) -> None:
    from imgsearch.web import create_app

    folder, _ = extreme
    with Index.open(db_of(folder)) as index:
        app = create_app(index)
        status, answer = asgi(app, "POST", "/api/search/image", (folder / "thin.png").read_bytes())
    assert status == 400 and "over the limit" in answer["error"]


# --- 6: FIFOs, /dev/zero, huge files --------------------------------------------------------


def test_6_fifos_and_devices_are_never_read(traps: tuple, plain: tuple, work: Path) -> None:
    db = str(db_of(plain[0]))
    fifo = work / "query-fifo.jpg"
    os.mkfifo(fifo)
    found = cli("query", str(fifo), "--db", db, timeout=60)
    assert found.returncode == 1 and "not a regular file (FIFO)" in found.one_line()
    zero = work / "query-zero.jpg"
    os.symlink("/dev/zero", zero)
    found = cli("query", str(zero), "--db", db, timeout=60, max_rss=3 * GB)
    assert found.returncode == 1
    assert "not a regular file (character device)" in found.one_line()
    _, done = traps
    reasons = skipped(done)
    assert reasons["fifo.jpg"] == "not a regular file (FIFO)"
    assert reasons["zero.jpg"] == "symbolic link (not followed)"
    assert reasons["huge.jpg"].startswith("over the limit: a file of 1 GB")
    assert "--max-file-size" in reasons["huge.jpg"]


def test_6_a_file_replaced_by_a_fifo_after_the_walk_is_skipped(work: Path) -> None:
    """What the indexer does with a path the walk listed as a regular file (decode workers
    and the move check's hash), on a FIFO and a link to /dev/zero: in a child, so that a
    hang is a timeout here."""
    folder = work / "swapped"
    folder.mkdir()
    os.mkfifo(folder / "a.jpg")
    os.symlink("/dev/zero", folder / "b.jpg")
    script = folder / "read.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from imgsearch.files import Preprocess, hash_file, load_pixels\n"
        "folder = Path(sys.argv[1])\n"
        "p = Preprocess(256, 224, (0.5,) * 3, (0.5,) * 3)\n"
        "for name in ('a.jpg', 'b.jpg'):\n"
        "    print(load_pixels(folder / name, p).error)\n"
        "try:\n"
        "    hash_file(folder / 'a.jpg')\n"
        "except OSError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "not a regular file (FIFO)",
        "symbolic link (not followed)",
        "not a regular file (FIFO)",
    ]


def test_skipped_entries_are_counted_by_kind_in_the_summary(work: Path, bank: Path) -> None:
    folder = work / "kinds"
    photo(folder, "chelsea")
    os.symlink(folder / "chelsea.jpg", folder / "link.jpg")
    (work / "elsewhere").mkdir()
    os.symlink(work / "elsewhere", folder / "album")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "notes.txt").write_text("not an image, and not skipped: not one to index")
    done = run("index", str(folder), "--model", "offline", "--captions", str(bank))
    assert done.exit_code == 0, done.output
    summary = done.stdout.strip()
    assert summary.startswith("added 1, ")
    assert "skipped 3 (2 symbolic links, 1 not a regular file) in" in summary, summary
    assert "skipped link.jpg: symbolic link (not followed)" in done.stderr
    assert "skipped album: symbolic link (not followed)" in done.stderr
    assert "skipped pipe.jpg: not a regular file (FIFO)" in done.stderr
    assert "notes.txt" not in done.stderr
    as_json = json.loads(run("index", str(folder), "--json").stdout)
    assert len(as_json["skipped"]) == 3


# --- 7: names that are not UTF-8 ---------------------------------------------------------


def test_7_a_name_that_is_not_utf8_is_skipped_never_the_run(traps: tuple) -> None:
    folder, done = traps
    reasons = skipped(done)
    assert reasons["x\\xff.jpg"].startswith("name is not valid UTF-8")
    assert json.loads(done.stdout)["added"] == 2  # the other photos
    assert "skipped x\\xff.jpg: name is not valid UTF-8" in done.stderr
    db = str(db_of(folder))
    bad = str(folder / BAD_NAME)
    for args in (["query", bad], ["captions", bad], ["remove", bad]):
        result = run(*args, "--db", db)
        assert result.exit_code == 1, result.output
        line = Done(1, "", result.stderr).one_line()
        assert "x\\xff.jpg" in line and "not valid UTF-8" in line


# --- 8: folder names with ? and % ------------------------------------------------------------


def test_8_a_folder_name_is_a_path_never_a_url(work: Path, bank: Path) -> None:
    parent = work / "names"
    photo(parent / "q?x", "chelsea")
    photo(parent / "q?y", "coffee")
    photo(parent / "q?y", "rocket")
    photo(parent / "%41", "horse")
    for name, count in (("q?x", 1), ("q?y", 2), ("%41", 1)):
        folder = parent / name
        done = run("index", str(folder), "--model", "offline", "--captions", str(bank), "-q")
        assert done.exit_code == 0, done.output
        assert db_of(folder).is_file()
        status = run("status", "--json", cwd=folder)
        assert json.loads(status.stdout)["images"] == count
    assert sorted(p.name for p in parent.iterdir()) == ["%41", "q?x", "q?y"]


# --- 9: an unreadable subfolder ----------------------------------------------------------


def test_9_an_unreadable_subfolder_keeps_its_images(
    plain: tuple, work: Path, unprivileged: dict
) -> None:
    folder = copy_of(plain[0], work / "closed-sub")
    chown_tree(folder)
    (folder / "sub").chmod(0)
    try:
        done = cli("index", str(folder), "--json", as_nobody=True, env=unprivileged)
    finally:
        (folder / "sub").chmod(0o755)
    reasons = skipped(done)
    summary = json.loads(done.stdout)
    assert summary["removed"] == 0 and summary["unchanged"] == 4
    assert reasons["sub"].startswith("unreadable folder (Permission denied)")
    status = run("status", "--json", "--db", str(db_of(folder)))
    assert json.loads(status.stdout)["images"] == 6


# --- 10: a read-only index -----------------------------------------------------------------


def test_10_a_read_only_index_answers_queries(plain: tuple, work: Path, unprivileged: dict) -> None:
    folder = copy_of(plain[0], work / "read-only")
    for derived in db_of(folder).parent.glob("index.db.*"):
        derived.unlink()  # the search index and means too are made, and cannot be kept
    chmod_tree(folder, 0o555, 0o444)
    db = str(db_of(folder))
    query = cli("query", str(folder / "chelsea.jpg"), "--db", db, "--json", as_nobody=True,
                env=unprivileged)  # fmt: skip
    assert query.returncode == 0, query.stderr
    assert len(json.loads(query.stdout)) == 5
    for args in (["captions", str(folder / "coffee.jpg")], ["clusters", "--k", "2"],
                 ["query", "--text", "a cat"]):  # fmt: skip
        done = cli(*args, "--db", db, as_nobody=True, env=unprivileged)
        assert done.returncode == 0, (args, done.stderr)
    index = cli("index", str(folder), "-q", as_nobody=True, env=unprivileged)
    assert index.returncode == 1 and "read-only" in index.one_line()


# --- 11: a full disk ----------------------------------------------------------------------


def test_11_a_full_disk_is_one_line_and_the_index_stays_intact(plain: tuple, work: Path) -> None:
    folder = copy_of(plain[0], work / "full")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"noise-{i}.png"
        )
    limit = db_of(folder).stat().st_size

    def small_files() -> None:  # in the child: no file may grow past the database's size
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = cli("index", str(folder), "-q", "--batch-size", "2", preexec_fn=small_files)
    assert done.returncode == 1
    line = done.one_line()
    assert "failed" in line and "intact" in line and "INSERT" not in line
    with sqlite3.connect(db_of(folder)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] >= 6
    again = run("index", str(folder), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(run("status", "--json", "--db", str(db_of(folder))).stdout)["images"] == 18


def test_11_sqlite_full_is_one_line(plain: tuple, work: Path) -> None:
    """SQLITE_FULL itself ("database or disk is full"), from a page limit on the file."""
    import dataclasses

    import sqlalchemy as sa

    folder = copy_of(plain[0], work / "no-room")
    store = Store.open(db_of(folder))
    try:
        record = store.get("chelsea.jpg")
        with store.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

        def no_room(connection, _record) -> None:  # noqa: ANN001 - DB-API connection
            connection.execute(f"PRAGMA max_page_count = {pages}")

        sa.event.listen(store.engine, "connect", no_room)
        copies = [dataclasses.replace(record, path=f"copy-{i}.jpg", id=None) for i in range(50)]
        with pytest.raises(ImgsearchError) as raised:
            store.put_images(copies)
        message = str(raised.value)
        assert "the disk is full" in message and "intact" in message, message
        assert "\n" not in message and "INSERT" not in message
        assert store.get("copy-0.jpg") is None  # nothing of the batch was kept
        assert store.count() == 6
    finally:
        store.close()


# --- 13: thresholds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["graph", "--tau", "nan"],
        ["graph", "--tau", "inf"],
        ["graph", "--tau", "-5"],
        ["clusters", "--tau", "nan"],
        ["duplicates", "--threshold", "nan"],
        ["duplicates", "--threshold", "-5"],
        ["duplicates", "--threshold", "0"],
        ["compare", "a.jpg", "b.jpg", "--tau", "nan"],
        ["evaluate", ".", "--tau", "inf"],
        ["sets", ".", "--query", "sub", "--min-pair", "nan"],
    ],
)
def test_13_thresholds_must_be_finite_scores(args: list[str], plain: tuple) -> None:
    result = run(*args, cwd=plain[0])  # an index there, which the values must never reach
    assert result.exit_code == 2, result.output
    line = Done(2, "", result.stderr).one_line()
    assert "must be a finite number" in line and "--" in line
    assert result.stdout == ""


def test_13_the_api_refuses_them_too(plain: tuple) -> None:
    folder = plain[0]
    with Index.open(db_of(folder)) as index:
        calls = [
            lambda: index.graph(tau=math.nan),
            lambda: index.graph(tau=2.0),
            lambda: index.clusters(tau=math.inf),
            lambda: index.duplicates(-5),
            lambda: index.duplicates(0.0),
            lambda: index.compare(folder / "chelsea.jpg", folder / "coffee.jpg", tau=math.nan),
            lambda: index.evaluate({"chelsea.jpg": "a", "coffee.jpg": "a"}, tau=math.inf),
        ]
        for call in calls:
            with pytest.raises(ImgsearchError, match="must be a finite number"):
                call()
        assert index.graph(tau=-0.5).tau == -0.5  # negative scores are real ones


# --- 14: evaluate's input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("labels.csv", "path,label\na.jpg,cat\nb.jpg\n", "labels.csv line 3: no label for b.jpg"),
        ("pairs.csv", "path_a,path_b,same\na.jpg,b.jpg\n", "pairs.csv line 2: no value for same"),
        ("pairs.csv", "path_a,path_b,same\na.jpg\n", "pairs.csv line 2: needs two paths"),
        ("pairs.csv", "path_a,path_b,same\na.jpg,b.jpg,maybe\n", "line 2: same must be 1 or 0"),
    ],
)
def test_14_bad_rows_are_one_line_with_their_number(
    work: Path, name: str, text: str, message: str
) -> None:
    folder = Path(tempfile.mkdtemp(dir=work))
    (folder / "labels.csv").write_text("path,label\na.jpg,cat\nb.jpg,dog\n")
    (folder / name).write_text(text)
    result = run("evaluate", str(folder), "-q")
    assert result.exit_code == 1
    assert message in Done(1, "", result.stderr).one_line()


def test_14_labeled_files_missing_from_the_index_are_counted(plain: tuple, work: Path) -> None:
    folder = copy_of(plain[0], work / "labeled")
    rows = ["path,label", "chelsea.jpg,animal", "sub/horse.jpg,animal", "coffee.jpg,thing",
            "rocket.jpg,thing", "gone.jpg,thing", "../outside.jpg,animal"]  # fmt: skip
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["evaluate", str(folder), "--methods", "caption,image"]
    done = run(*args, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["missing"] == 2
    assert "labels.csv line 6: gone.jpg: no such file, left out" in done.stderr
    assert "labels.csv line 7: ../outside.jpg: outside the folder, left out" in done.stderr
    table = run(*args, "-q")
    assert "2 labeled files are not in the index" in table.stdout


# --- 15: high bit depths -------------------------------------------------------------------


def test_15_high_bit_depth_images_keep_their_pixels(plain: tuple, work: Path) -> None:
    gray = np.asarray(sample("camera").convert("L"), dtype=np.float64)
    gray = np.round((gray - gray.min()) / (gray.max() - gray.min()) * 255)  # 0 to 255
    folder = work / "depth"
    folder.mkdir()
    Image.fromarray(gray.astype(np.uint8)).save(folder / "gray8.png")
    Image.fromarray((gray * 257).astype(np.uint16)).save(folder / "gray16.png")
    Image.fromarray((gray * 257).astype(np.uint16)).save(folder / "gray16.tif")
    Image.fromarray((gray * 1000 - 50000).astype(np.int32)).save(folder / "int32.tif")
    Image.fromarray((gray / 255 * 3.5 - 1).astype(np.float32)).save(folder / "float.tif")
    Image.new("RGB", (64, 64), "white").save(folder / "white.png")
    reference = np.asarray(decode(folder / "gray8.png").image, dtype=np.float64)
    for name in ["gray16.png", "gray16.tif", "int32.tif", "float.tif"]:
        pixels = np.asarray(decode(folder / name).image, dtype=np.float64)
        assert np.abs(pixels - reference).mean() < 2, name
    db = str(db_of(plain[0]))
    same = run("compare", str(folder / "gray16.png"), str(folder / "gray8.png"),
               "--methods", "image", "--db", db, "--json")  # fmt: skip
    white = run("compare", str(folder / "gray16.png"), str(folder / "white.png"),
                "--methods", "image", "--db", db, "--json")  # fmt: skip
    assert same.exit_code == 0 and white.exit_code == 0, same.output + white.output
    score = json.loads(same.stdout)["methods"]["image"]["score"]
    assert score > 0.99 and json.loads(white.stdout)["methods"]["image"]["score"] < 0.9


# --- 16: the web UI and the map -------------------------------------------------------------


def test_16_a_file_name_cannot_break_the_maps_embedded_json(extreme: tuple, work: Path) -> None:
    folder, _ = extreme
    out = work / "map.html"
    done = run("map", "-o", str(out), "--method", "pca", "--k", "2", "--db", str(db_of(folder)))
    assert done.exit_code == 0, done.output
    page = out.read_text()
    start = page.index('<script type="application/json" id="points">') + len(
        '<script type="application/json" id="points">'
    )
    data = page[start : page.index("</script>", start)]
    # '<!--' then '<script' in script text would swallow the map's own script that follows.
    assert "<" not in data and ">" not in data and "&" not in data
    assert SCRIPT_NAME in [p["name"] for p in json.loads(data)]


def test_16_a_server_error_is_one_line_not_a_traceback(
    plain: tuple, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    from imgsearch.web import create_app

    def broken(self: Index) -> None:
        raise RuntimeError("the means file is damaged\nsee above")

    with Index.open(db_of(plain[0])) as index:
        app = create_app(index)
        monkeypatch.setattr(Index, "status", broken)
        status, answer = asgi(app, "GET", "/api/status")
    assert status == 500 and answer["error"].startswith("internal error: RuntimeError")
    err = capfd.readouterr().err
    assert err == (
        "imgsearch: error serving GET /api/status: RuntimeError: the means file is damaged "
        "see above\n"
    )


def test_11_a_full_disk_for_any_other_file_is_one_line(plain: tuple) -> None:
    """ENOSPC from writing anything else (here /dev/full, a disk that is always full)."""
    done = run("graph", "-o", "/dev/full", "--db", str(db_of(plain[0])))
    assert done.exit_code == 1
    line = Done(1, "", done.stderr).one_line()
    assert "No space left on device (the disk is full)" in line and "intact" in line
    assert "Errno" not in line and "OSError" not in line
