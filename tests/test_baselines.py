"""Tests for the SSIM / FSIM baselines: fixed points, orderings, and reference values."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from imgsearch.baselines import fsim, fsimc, phase_congruency, ssim


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    sigmas = (sigma, sigma, 0) if image.ndim == 3 else sigma
    blurred = ndimage.gaussian_filter(image.astype(np.float64), sigmas)
    return np.clip(blurred, 0, 255).round().astype(np.uint8)


def _noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noisy = image + np.random.default_rng(seed).normal(0.0, sigma, image.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return data.camera()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


MEASURES = [ssim, fsim, fsimc]


@pytest.mark.parametrize("measure", MEASURES)
def test_identical_images_score_one(measure, camera, astronaut) -> None:
    assert measure(camera, camera) == pytest.approx(1.0, abs=1e-6)
    assert measure(astronaut, astronaut.copy()) == pytest.approx(1.0, abs=1e-6)
    pil = Image.fromarray(astronaut)
    assert measure(pil, pil, size=None) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize(
    "distort, levels",
    [(_blur, [0.5, 1.5, 3.0]), (_noise, [5.0, 15.0, 40.0]), (_jpeg, [75, 30, 10])],
    ids=["blur", "noise", "jpeg"],
)
def test_stronger_distortion_scores_lower(measure, distort, levels, astronaut) -> None:
    scores = [measure(astronaut, distort(astronaut, level)) for level in levels]
    assert all(0.0 <= s < 1.0 for s in scores), scores
    assert scores[0] > scores[1] > scores[2], scores


@pytest.mark.parametrize("measure", MEASURES)
def test_unrelated_photo_scores_below_mild_distortion(measure, astronaut) -> None:
    mild = measure(astronaut, _jpeg(astronaut, 50))
    for other in (data.coffee(), data.chelsea(), data.rocket()):
        unrelated = measure(astronaut, other)  # different sizes: both resized to 256x256
        assert 0.0 <= unrelated < mild - 0.2, (unrelated, mild)


@pytest.mark.parametrize("measure", MEASURES)
def test_symmetric(measure, astronaut) -> None:
    a, b = Image.fromarray(astronaut), Image.fromarray(data.coffee())
    assert measure(a, b) == pytest.approx(measure(b, a), abs=1e-9)
    noisy = _noise(astronaut, 20)
    assert measure(astronaut, noisy) == pytest.approx(measure(noisy, astronaut), abs=1e-9)


def test_pil_and_array_inputs_agree(astronaut) -> None:
    noisy = _noise(astronaut, 10)
    for measure in MEASURES:
        from_arrays = measure(astronaut, noisy)
        from_pil = measure(Image.fromarray(astronaut), Image.fromarray(noisy))
        assert from_arrays == pytest.approx(from_pil, abs=1e-12)
    gray = Image.fromarray(astronaut).convert("L")
    assert fsim(gray, Image.fromarray(noisy).convert("L")) == pytest.approx(
        fsimc(gray, Image.fromarray(noisy).convert("L")), abs=1e-12
    )


def test_chroma_only_change_is_seen_by_fsimc_only() -> None:
    cat = data.chelsea().astype(np.float64)
    gray = cat.mean(axis=2, keepdims=True)
    saturated = np.clip((cat - gray) * 2 + gray, 0, 255).astype(np.uint8)
    cat = cat.astype(np.uint8)
    assert fsimc(cat, saturated) < fsim(cat, saturated) - 0.005


def test_shape_mismatch_needs_a_size(camera) -> None:
    with pytest.raises(ValueError):
        fsim(camera, camera[:200], size=None)
    assert 0.0 < fsim(camera, camera[:200]) < 1.0


# Reference values from the authors' FeatureSIM.m (phasecong2 included), run unchanged under
# GNU Octave 7.3 on the same uint8 arrays, size=None (so the 512x512 cases also exercise the
# reference's F = 2 average-and-decimate step). Our values agree to within 2e-8.
@pytest.mark.parametrize(
    "name, fsim_ref, fsimc_ref",
    [
        ("camera_blur1", 0.9749844866, 0.9749844866),
        ("camera_blur3", 0.8369370888, 0.8369370888),
        ("camera256_blur1.5", 0.8092287765, 0.8092287765),
        ("astronaut_vs_coffee", 0.5294593726, 0.5094680411),
        ("chelsea_saturated", 0.9977429214, 0.9906844693),
    ],
)
def test_matches_reference_implementation(name, fsim_ref, fsimc_ref) -> None:
    camera = data.camera()
    if name == "camera_blur1":
        a, b = camera, _blur(camera, 1)
    elif name == "camera_blur3":
        a, b = camera, _blur(camera, 3)
    elif name == "camera256_blur1.5":
        a = camera[::2, ::2].copy()
        b = _blur(a, 1.5)
    elif name == "astronaut_vs_coffee":
        a, b = data.astronaut()[:400, :400], data.coffee()[:, 100:500]
    else:
        cat = data.chelsea()
        gray = cat.astype(np.float64).mean(axis=2, keepdims=True)
        a = cat
        b = np.clip((cat - gray) * 2 + gray, 0, 255).astype(np.uint8)
    assert fsim(a, b, size=None) == pytest.approx(fsim_ref, abs=1e-6)
    assert fsimc(a, b, size=None) == pytest.approx(fsimc_ref, abs=1e-6)


def test_phase_congruency_of_a_step_edge() -> None:
    # PC peaks where the Fourier components of a step are in phase, falls off away from it,
    # and does not depend on contrast: the properties FSIM relies on. The numbers are the
    # reference phasecong2's on this image (under Octave): a discrete step peaks at 0.818.
    step = np.zeros((128, 128))
    step[:, 64:] = 200.0  # with the FFT's wrap-around there is a second edge at column 0
    pc = phase_congruency(step)
    assert np.ptp(pc, axis=0).max() < 1e-9  # vertical edge: every row alike
    profile = pc[64]
    assert profile[[63, 64, 127, 0]] == pytest.approx([0.818330] * 4, abs=1e-5)
    assert profile[[62, 59, 99]] == pytest.approx([0.486881, 0.304339, 0.013797], abs=1e-5)
    assert set(np.argsort(profile)[-4:]) == {0, 63, 64, 127}
    assert np.median(profile) < 0.3
    low_contrast = phase_congruency(step * 0.1 + 100)
    assert np.abs(low_contrast - pc).max() < 1e-3


def test_flat_images() -> None:
    flat = np.full((64, 64), 128, dtype=np.uint8)
    assert fsim(flat, flat) == pytest.approx(1.0)
    assert 0.0 <= ssim(flat, flat + 50) < 1.0
