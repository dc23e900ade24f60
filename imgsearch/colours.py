"""Colours the pixels can prove, in the words people use, for models that cannot see colour.

The offline model is an ImageNet classifier read through a text encoder: it knows "a shirt"
but not "a yellow shirt". This module reads colour straight from the pixels instead, in
CIELAB/LCh (a perceptual space, so one chroma threshold means "no colour" at every hue), for
the subject (the pixels that differ most from the photo's border, weighted towards the
centre) and for the whole photo. Every colour comes with an honest strength in [0, 1]: the
share of the (weighted) pixels that have it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "beige",
    "white",
    "grey",
    "black",
)
BLACK_AND_WHITE = "a black and white photo"
BRIGHT = "a bright photo"
DARK = "a dark photo"


def _a(colour: str) -> str:
    return f"an {colour}" if colour[0] in "aeiou" else f"a {colour}"


def object_caption(colour: str) -> str:
    return f"{_a(colour)} object"


def thing_caption(colour: str) -> str:
    return f"something {colour}"


def photo_caption(colour: str) -> str:
    return f"{_a(colour)} photo"


# Appended to the packaged bank (scripts/make_caption_bank.py), so older ids keep their meaning.
COLOUR_CAPTIONS: tuple[str, ...] = (
    *(make(c) for c in COLOURS for make in (object_caption, thing_caption, photo_caption)),
    BLACK_AND_WHITE,
    BRIGHT,
    DARK,
)

# A colour a minority of the pixels has is not proof: below this share nothing is claimed.
MIN_STRENGTH = 0.4
# Chroma (LCh C*) below which a pixel has no colour to speak of.
ACHROMATIC = 10.0
# A photo is black and white when at least this share of it has chroma below GREYSCALE.
GREYSCALE = 4.0
BW_SHARE = 0.98


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) to CIELAB (D65) float32 (..., 3): L in [0, 100]."""
    c = np.asarray(rgb, dtype=np.float32) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
        dtype=np.float32,
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
    lab = np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )
    return lab.astype(np.float32)


def name_pixels(lab: np.ndarray) -> np.ndarray:
    """Each pixel's colour name, as an index into COLOURS, by lightness/chroma/hue rules.

    Hue bands are CIELAB hue angles of the colours' familiar examples (pure red is at
    about 40 degrees, orange 70, yellow 100, green 135, blue 305, purple 325); dark oranges
    and yellows are brown, light desaturated ones beige, light and bluish reds pink.
    """
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    C = np.hypot(a, b)
    h = np.degrees(np.arctan2(b, a)) % 360
    idx = {name: i for i, name in enumerate(COLOURS)}
    out = np.full(L.shape, idx["grey"], dtype=np.int8)

    warm = (h >= 48) & (h < 115)
    reddish = (h >= 345) | (h < 48)
    purplish = (h >= 312) & (h < 345)
    # Chromatic by hue first, then the lightness/chroma exceptions override.
    out[(h >= 110) & (h < 200)] = idx["green"]
    out[(h >= 200) & (h < 312)] = idx["blue"]
    out[purplish] = idx["purple"]
    out[reddish] = idx["red"]
    out[(h >= 48) & (h < 80)] = idx["orange"]
    out[(h >= 80) & (h < 110)] = idx["yellow"]
    out[(reddish | purplish) & (L > 62)] = idx["pink"]
    out[reddish & (L > 50) & (C < 50)] = idx["pink"]
    out[((h >= 345) | (h < 15)) & (L > 45)] = idx["pink"]  # bluish reds: pink, not red
    out[warm & (L < 55)] = idx["brown"]
    out[(h >= 30) & (h < 48) & (L < 45) & (C < 50)] = idx["brown"]
    out[warm & (L >= 55) & (C < 28)] = idx["beige"]

    # Photographed dark colours keep little chroma: the threshold grows with lightness.
    grey = C < ACHROMATIC * (0.5 + L / 100)
    out[grey] = idx["grey"]
    out[grey & (L < 28)] = idx["black"]
    out[grey & (L > 72)] = idx["white"]
    out[grey & warm & (L >= 50) & (C >= 4)] = idx["beige"]  # a light, faintly warm grey
    out[L < 12] = idx["black"]  # too dark for any hue a person would name
    return out


@dataclass(frozen=True)
class ColourReading:
    """What the pixels say about colour; every strength is a share of pixels in [0, 1]."""

    subject: str  # the dominant colour of the subject
    subject_share: float
    photo: str  # the dominant colour of the whole photo
    photo_share: float
    black_and_white: float  # share of pixels with (almost) no chroma
    bright: float  # share of light pixels (L* > 70)
    dark: float  # share of dark pixels (L* < 30)

    def captions(self, min_strength: float = MIN_STRENGTH) -> list[tuple[str, float]]:
        """(caption, strength) for what the pixels prove, strongest first; weak claims
        are left out rather than added with a small score."""
        found: list[tuple[str, float]] = []
        if self.black_and_white >= BW_SHARE:
            found.append((BLACK_AND_WHITE, self.black_and_white))
        elif self.subject_share >= min_strength:
            # One caption for the subject: "something red" is in the bank for CLIP and text
            # queries, but adding it too would count the same colour twice.
            found.append((object_caption(self.subject), self.subject_share))
        if self.photo_share >= min_strength and self.black_and_white < BW_SHARE:
            found.append((photo_caption(self.photo), self.photo_share))
        tone = max((self.bright, BRIGHT), (self.dark, DARK))
        if tone[0] >= 0.6:
            found.append((tone[1], tone[0]))
        return sorted(found, key=lambda item: -item[1])


def subject_weights(lab: np.ndarray) -> np.ndarray:
    """Per-pixel weights of the subject: how far each pixel is from the border's colour
    (the background, for a photographed object), times a centre-weighted Gaussian."""
    h, w = lab.shape[:2]
    edge = max(1, min(h, w) // 12)
    border = np.concatenate(
        [
            lab[:edge].reshape(-1, 3),
            lab[-edge:].reshape(-1, 3),
            lab[:, :edge].reshape(-1, 3),
            lab[:, -edge:].reshape(-1, 3),
        ]
    )
    background = np.median(border, axis=0)
    distance = np.linalg.norm(lab - background, axis=-1)
    ys = (np.arange(h) - (h - 1) / 2) / (h / 2)
    xs = (np.arange(w) - (w - 1) / 2) / (w / 2)
    centre = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * 0.5**2))
    differs = np.clip((distance - 10.0) / 15.0, 0.0, 1.0)
    if (differs * centre).sum() < 0.05 * centre.sum():  # no subject apart from the ground
        return centre
    return differs * centre


def _dominant(names: np.ndarray, weights: np.ndarray) -> tuple[str, float]:
    totals = np.bincount(names.ravel(), weights=weights.ravel(), minlength=len(COLOURS))
    best = int(np.argmax(totals))
    return COLOURS[best], float(totals[best] / max(totals.sum(), 1e-12))


def read_colours(rgb: np.ndarray) -> ColourReading:
    """The colour reading of one RGB uint8 (H, W, 3) photo (the model's crop will do)."""
    lab = rgb_to_lab(rgb)
    names = name_pixels(lab)
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    subject, subject_share = _dominant(names, subject_weights(lab))
    photo, photo_share = _dominant(names, np.ones(names.shape, np.float32))
    return ColourReading(
        subject=subject,
        subject_share=subject_share,
        photo=photo,
        photo_share=photo_share,
        black_and_white=float((chroma < GREYSCALE).mean()),
        bright=float((lab[..., 0] > 70).mean()),
        dark=float((lab[..., 0] < 30).mean()),
    )
