"""Shared fixtures: real photos (scikit-image's samples), a tiny random CLIP, a test cache."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.pg import PgServer, find_bin_dir

# No test may reach the network: the hub is off, and every model is local.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Every test sees float32 models whatever this CPU supports (CI's CPUs vary), so pinned
# outputs stay pinned; tests/test_precision.py forces the reduced formats itself.
os.environ.setdefault("IMGSEARCH_PRECISION", "float32")

SAMPLES = [
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "camera",
    "coins",
    "horse",
    "hubble_deep_field",
]


def sample(name: str) -> Image.Image:
    array = getattr(data, name)()
    if array.dtype != np.uint8:
        array = (array * 255).astype(np.uint8) if array.max() <= 1 else array.astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def write_photos(folder: Path, names: list[str] = SAMPLES) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        path = folder / f"{name}.jpg"
        sample(name).save(path, quality=90)
        out[name] = path
    return out


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the whole run, never the user's own."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["IMGSEARCH_CACHE_DIR"] = str(path)
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))  # an empty model cache
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder)
    return folder


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the whole run (tests/pg.py). Without PostgreSQL
    installed the tests that need it fail, never skip."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH): "
            "apt-get install postgresql, as .ci/run does",
            pytrace=False,
        )
    server = PgServer(bin_dir)
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A new, empty PostgreSQL database for one test: its URL, password included."""
    return pg_server.database()


@pytest.fixture(scope="session")
def small_bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short caption bank: enough to tell the sample photos apart, quick to embed."""
    path = tmp_path_factory.mktemp("bank") / "captions.txt"
    path.write_text(
        "\n".join(
            [
                "a photo of a cat",
                "a photo of a tabby cat",
                "a photo of a kitten",
                "a photo of a dog",
                "a cup of coffee",
                "a photo of espresso",
                "a coffee mug",
                "a rocket on a launch pad",
                "a space shuttle",
                "a missile",
                "an astronaut",
                "a woman in a space suit",
                "a man with a camera",
                "a photographer",
                "a pile of coins",
                "a horse",
                "a silhouette of a horse",
                "stars in the night sky",
                "a galaxy",
                "a photo of a car",
                "a bowl of fruit",
                "a beach",
            ]
        )
    )
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, seeded CLIP that runs in milliseconds, saved as a folder."""
    from imgsearch.models.clip import save_random_clip

    return save_random_clip(
        tmp_path_factory.mktemp("tiny-clip"),
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child the test stops with SIGINT: SIGINT at its default, as a
    terminal's foreground command has it. A test run started in the background by a shell
    without job control (``cmd &`` in a script) inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler: the child would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def consistent_index(db: Path) -> int:
    """Asserts the index is whole (integrity, no orphan caption, 20 captions an image,
    facts for each image); the images stored."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        saved = conn.execute("select count(*) from images").fetchone()[0]
        orphans = conn.execute(
            "select count(*) from image_captions where image_id not in (select id from images)"
        ).fetchone()[0]
        per_image = conn.execute(
            "select count(*) from (select image_id from image_captions group by image_id"
            " having count(*) != 20)"
        ).fetchone()[0]
        with_captions = conn.execute(
            "select count(distinct image_id) from image_captions"
        ).fetchone()[0]
        facts = conn.execute("select count(*) from photo_facts").fetchone()[0]
    finally:
        conn.close()
    assert (orphans, per_image) == (0, 0) and with_captions == saved and facts == saved
    return saved
