"""Leave-one-out retrieval metrics, and `imgsearch evaluate` on a labeled folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import ImageEnhance, ImageOps

from imgsearch.cli import main
from imgsearch.evaluate import retrieval_metrics
from tests.conftest import sample


def test_metrics_by_hand() -> None:
    # Four images on a line; labels a a b b. Image 0 ranks 1 (a), 2 (b), 3 (b): AP 1.
    # Image 1 ranks 2 (b, closer), 0 (a): AP 1/2.
    vectors = np.array([[1.0, 0.0], [0.6, 0.8], [0.5, 0.86], [0.0, 1.0]])
    metrics = retrieval_metrics(vectors, ["a", "a", "b", "b"], ks=(1,))
    # inner products: 0->1 .6, 0->2 .5, 0->3 0   | AP 1, P@1 1
    #                 1->0 .6, 1->2 .988, 1->3 .8 | 2, 3, 0: AP 1/3, P@1 0
    #                 2->0 .5, 2->1 .988, 2->3 .86| 1, 3: AP 1/2, P@1 0
    #                 3->0 0, 3->1 .8, 3->2 .86   | 2: AP 1, P@1 1
    assert metrics["map"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1) / 4, abs=1e-4)
    assert metrics["p@1"] == pytest.approx(0.5)


def _labeled_folder(root: Path) -> Path:
    """Three subjects, four variants each: crops, flips, colour and brightness changes."""
    rows = ["path,label"]
    for name in ["chelsea", "coffee", "rocket"]:
        (root / name).mkdir(parents=True)
        image = sample(name)
        w, h = image.size
        variants = [
            image,
            ImageOps.mirror(image),
            image.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
            ImageEnhance.Brightness(image).enhance(1.3),
        ]
        for i, variant in enumerate(variants):
            variant.save(root / name / f"{i}.jpg", quality=85)
            rows.append(f"{name}/{i}.jpg,{name}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_evaluate_reports_map_and_precision_per_method(tmp_path: Path) -> None:
    folder = _labeled_folder(tmp_path / "labeled")
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(folder), "--model", "offline", "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 12 and report["labels"] == 3 and report["default"] == "caption"
    assert set(report["methods"]) >= {"caption", "image"}
    for values in report["methods"].values():
        assert set(values) >= {"map", "p@10"}
    # Variants of one photo are easy: the caption method must find them.
    assert report["methods"]["caption"]["map"] > 0.9
    assert report["methods"]["caption"]["p@1"] == 1.0
    assert (folder / ".imgsearch" / "index.db").is_file()
    text = runner.invoke(main, ["evaluate", str(folder), "-q"])
    assert "12 images, 3 labels" in text.stdout and "caption" in text.stdout


def test_evaluate_without_labels_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1 and "no labels.csv" in result.stderr
