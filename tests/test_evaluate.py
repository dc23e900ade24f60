"""Leave-one-out retrieval metrics, and `imgsearch evaluate` on a labeled folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import ImageEnhance, ImageOps

from imgsearch.cli import main
from imgsearch.metrics import pair_metrics, retrieval_metrics, roc_auc, sample_pairs
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


def test_pair_metrics_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    same = np.array([True, True, False, True, False, False])
    metrics = pair_metrics(scores, same, tau=0.75)
    assert metrics["pair_accuracy"] == pytest.approx(5 / 6, abs=1e-4)  # 0.6 is missed
    # Best cut: between 0.6 and 0.4 (everything above is "same"): 5 of 6 right, like 0.75.
    assert metrics["pair_accuracy_best"] == pytest.approx(5 / 6, abs=1e-4)
    assert metrics["best_threshold"] in (pytest.approx(0.75), pytest.approx(0.5))
    # AUC: of 9 (positive, negative) pairs, only (0.6 vs 0.7) is ordered wrongly.
    assert metrics["auc"] == pytest.approx(8 / 9, abs=1e-4)
    assert roc_auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5  # ties count half


def test_sampled_pairs_are_balanced_and_reproducible() -> None:
    labels = {f"{c}{i}.jpg": c for c in "abcd" for i in range(10)}
    pairs = sample_pairs(labels, count=50)
    assert pairs == sample_pairs(labels, count=50)
    same = [p for p in pairs if p[2]]
    assert len(same) == 50 and len(pairs) == 100
    assert all((labels[a] == labels[b]) == s for a, b, s in pairs)
    assert len(set(pairs)) == 100


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
    assert report["pairs"] == 18 + 48  # no pairs.csv: every same pair, 48 different ones
    methods = report["methods"]
    every = ["caption", "caption_avg", "image", "hybrid", "concepts", "concept_hybrid"]
    every += ["ssim", "fsim"]
    assert list(methods) == every
    pair_keys = {"pair_accuracy", "pair_accuracy_best", "threshold", "best_threshold", "auc"}
    for name, values in methods.items():
        retrieval = {"map", "p@1", "p@5", "p@10"} if name not in ("ssim", "fsim") else set()
        assert set(values) == pair_keys | retrieval
        assert 0 <= values["pair_accuracy"] <= values["pair_accuracy_best"] <= 1
    # Variants of one photo are easy: the caption method must find them.
    assert methods["caption"]["map"] > 0.9 and methods["caption"]["p@1"] == 1.0
    assert methods["caption"]["auc"] > 0.9
    assert methods["ssim"]["threshold"] == 0.35  # the recorded tau, not the best one
    assert (folder / ".imgsearch" / "index.db").is_file()
    text = runner.invoke(main, ["evaluate", str(folder), "-q", "--methods", "caption,image"])
    assert "12 images, 3 labels, 66 pairs" in text.stdout
    assert "caption" in text.stdout and "fsim" not in text.stdout


def test_evaluate_reads_pairs_csv_and_tau_override(tmp_path: Path) -> None:
    folder = _labeled_folder(tmp_path / "labeled")
    (folder / "pairs.csv").write_text(
        "path_a,path_b,same\nchelsea/0.jpg,chelsea/1.jpg,1\nchelsea/0.jpg,coffee/1.jpg,0\n"
    )
    args = ["evaluate", str(folder), "--model", "offline", "--json", "-q", "--methods", "caption"]
    report = json.loads(CliRunner().invoke(main, [*args, "--tau", "1"]).stdout)
    assert report["pairs"] == 2
    assert report["methods"]["caption"]["threshold"] == 1
    assert report["methods"]["caption"]["pair_accuracy"] == 0.5  # nothing reaches tau 1
    assert report["methods"]["caption"]["pair_accuracy_best"] == 1.0


def test_evaluate_without_labels_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1 and "no labels.csv" in result.stderr
