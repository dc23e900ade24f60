"""Telling copies from look-alikes on the pixels: is one photo an edited copy of another?

Image vectors are semantic: two portraits of one person in one room sit as close as a photo
and its resized copy, and a mirrored copy can sit far away. So a candidate pair (from the
vectors, or from the perceptual hashes of the eight orientations) is verified here:

* ORB features of both photos (and of the mirrored second) are matched, and one similarity
  transform (scale, a turn, a shift) is fitted with RANSAC. A copy is related to its photo
  by exactly such a transform; another shot of the same scene is not (parallax, motion).
* The second photo is warped onto the first and compared cell by cell, after a gain and
  offset that absorb a light colour adjustment: a person who moved between two shots of a
  burst leaves cells that disagree.
* How much of each photo the other covers says whether it is a copy (one inside the other,
  keeping at least half of it: a crop) or two overlapping crops (``overlap``: similar).

The keep rule lives here too: the photo to keep must not be derived from another member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imgsearch.files import DEFAULT_LIMITS, BadImage, Limits, PhotoFacts, decode

# The working size the features are found at (longest side, pixels); the pixels compared
# are kept at half that in gray and at COLOUR_SIDE in colour, so that a cache of many
# photos' features stays small.
WORK_SIDE = 512
GRAY_SIDE = 256
COLOUR_SIDE = 64
# The largest colour difference (CIELAB a*b*, worst cell, after a per-channel gain and
# offset) a copy may show: a light adjustment stays well below, a recolouring does not.
MAX_COLOUR_SHIFT = 12.0
COLOUR_GAIN = (0.6, 1.6)
COLOUR_OFFSET = 6.0
ORB_FEATURES = 1500
RATIO = 0.8  # Lowe's ratio test
RANSAC_PIXELS = 4.0  # reprojection error allowed, at the working size
MIN_INLIERS = 15
# Whole frames are compared only when their 32 x 32 thumbnails (each normalised) already
# agree this well: a periodic texture would otherwise align with any other of its kind.
WHOLE_FRAME_GAP = 0.02
MAX_TURN_ERROR = 4.0  # degrees from a multiple of 90
GRID = 8  # cells per side for the pixel comparison
# A cell agrees when its mean difference (gray levels, after blur, gain and offset) is at
# most this; the pair's score is 1 - worst cell / SCORE_SPAN.
SCORE_SPAN = 64.0
COPY_SCORE = 0.80  # benchmarks/duplicates_quality.py
# A crop keeps at least half of the photo; the copy lies (almost) wholly inside the other.
MIN_KEPT = 0.45
MIN_INSIDE = 0.85
MIN_OVERLAP = 0.10  # below this two crops share too little to call them one scene


@dataclass
class Features:
    """One photo at the working size: gray pixels, ORB key points and descriptors (also of
    the mirrored photo), and how many original pixels one working pixel is."""

    gray: np.ndarray  # at GRAY_SIDE
    colour: np.ndarray  # CIELAB float32 at COLOUR_SIDE
    work: tuple[int, int]  # the working size (width, height) the points are in
    factor: float  # original pixels per working pixel
    width: int  # original (upright) size
    height: int
    points: tuple[np.ndarray, np.ndarray]  # (coordinates, descriptors), as found
    mirrored: tuple[np.ndarray, np.ndarray]  # the same for the left-right mirror


@dataclass
class Match:
    """How photo ``b`` sits in photo ``a``: ``kind`` is ``copy``, ``overlap`` or None.

    ``scale`` is a's original pixels per b's; ``turn`` the turn of b in degrees (0, 90, 180
    or 270) and ``mirrored`` whether b is a mirror image; ``cover_a`` and ``cover_b`` the
    share of each photo the other covers; ``score`` the pixel agreement (1 is the same)."""

    kind: str | None
    inliers: int = 0
    matches: int = 0
    scale: float = 1.0
    turn: int = 0
    mirrored: bool = False
    cover_a: float = 0.0
    cover_b: float = 0.0
    score: float = 0.0
    colour: float = 0.0

    def evidence(self) -> dict:
        return {
            "matched_features": self.inliers,
            "scale": round(self.scale, 4),
            "turn": self.turn,
            "mirrored": self.mirrored,
            "covers": round(min(self.cover_a, self.cover_b), 4),
            "pixel_agreement": round(self.score, 4),
            "colour_difference": round(self.colour, 2),
        }


def features(path: Path, limits: Limits = DEFAULT_LIMITS) -> Features:
    """``BadImage`` when the file cannot be read now."""
    import cv2

    decoded = decode(path, WORK_SIDE, limits)
    image = decoded.image
    factor = 1.0
    if max(image.size) > WORK_SIDE:
        factor = max(image.size) / WORK_SIDE
        size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    gray = np.asarray(image.convert("L"))
    factor = decoded.width / gray.shape[1]
    orb = cv2.ORB_create(nfeatures=ORB_FEATURES, fastThreshold=10)
    small = _fit(image, GRAY_SIDE).convert("L")
    rgb = np.asarray(_fit(image, COLOUR_SIDE).convert("RGB"), np.float32) / 255.0
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)

    def find(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Equalised first: a faint texture gets corners to find, and a copy made brighter or
        # flatter gets the same ones as its photo.
        points, descriptors = orb.detectAndCompute(cv2.equalizeHist(pixels), None)
        if descriptors is None:
            return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
        return np.float32([p.pt for p in points]), descriptors

    return Features(
        np.asarray(small),
        lab,
        image.size,
        factor,
        decoded.width,
        decoded.height,
        find(gray),
        find(np.ascontiguousarray(gray[:, ::-1])),
    )


def _fit(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


def _at(transform: np.ndarray, a: Features, b: Features, width_a: int, width_b: int) -> np.ndarray:
    """The working-size transform for pixels kept at other sizes (widths ``width_a``, ``_b``),
    pixel centres kept in place (a resize maps x to (x + 0.5) * r - 0.5)."""
    ra, rb = width_a / a.work[0], width_b / b.work[0]
    # x_b_work = (x_b + 0.5) / rb - 0.5; x_a = (M x_b_work + 0.5) * ra - 0.5
    linear = transform[:, :2].astype(np.float64)
    shift = transform[:, 2].astype(np.float64)
    offset_b = (0.5 / rb - 0.5) * np.ones(2)
    out = np.empty((2, 3))
    out[:, :2] = linear * ra / rb
    out[:, 2] = ra * (linear @ offset_b + shift + 0.5) - 0.5
    return out


def verify(a: Features, b: Features) -> Match:
    """Whether ``b`` is a copy of ``a`` (or the other way round), an overlapping crop, or
    neither: matched corners first, then the whole frames (see ``_whole_frame``)."""
    match = _matched(a, b)
    if match.kind is None:
        whole = _whole_frame(a, b)
        if whole.kind is not None:
            return whole
    return match


def _matched(a: Features, b: Features) -> Match:
    """Corners matched under one similarity transform, b warped onto a and compared. What
    it decides does not depend on the order; ``scale`` and the covers are as seen from a."""
    import cv2

    cv2.setRNGSeed(0)  # RANSAC's samples: the same pair is always judged the same way
    best: tuple[int, int, np.ndarray, bool] | None = None
    for mirrored in (False, True):
        points_b, descriptors_b = b.mirrored if mirrored else b.points
        points_a, descriptors_a = a.points
        if len(descriptors_a) < 2 or len(descriptors_b) < 2:
            continue
        pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(descriptors_b, descriptors_a, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
        if len(good) < MIN_INLIERS:
            continue
        source = points_b[[m.queryIdx for m in good]]
        target = points_a[[m.trainIdx for m in good]]
        transform, mask = cv2.estimateAffinePartial2D(
            source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS,
            maxIters=2000, confidence=0.995,
        )  # fmt: skip
        if transform is None:
            continue
        inliers = int(mask.sum())
        if best is None or inliers > best[0]:
            best = (inliers, len(good), transform, mirrored)
        if inliers >= 4 * MIN_INLIERS:
            break  # plainly matched as it is: the mirror image would not match better
    if best is None or best[0] < MIN_INLIERS:
        return Match(None, inliers=0 if best is None else best[0])
    inliers, matches, transform, mirrored = best
    scale_work = math.hypot(transform[0, 0], transform[1, 0])
    angle = math.degrees(math.atan2(transform[1, 0], transform[0, 0])) % 360
    turn = int(round(angle / 90.0)) % 4 * 90
    off = min(abs(angle - turn), 360 - abs(angle - turn))
    scale = scale_work * a.factor / b.factor
    match = Match(None, inliers, matches, scale, turn, mirrored)
    if off > MAX_TURN_ERROR or scale_work <= 0:
        return match
    width_a, height_a = a.work
    width_b, height_b = b.work
    corners = np.float32([[0, 0], [width_b, 0], [width_b, height_b], [0, height_b]])
    placed = corners @ transform[:, :2].T.astype(np.float32) + transform[:, 2].astype(np.float32)
    frame = np.float32([[0, 0], [width_a, 0], [width_a, height_a], [0, height_a]])
    overlap, _ = cv2.intersectConvexConvex(placed, frame)
    match.cover_a = float(overlap) / (width_a * height_a)
    match.cover_b = float(overlap) / (scale_work**2 * width_b * height_b)
    gray_b = np.ascontiguousarray(b.gray[:, ::-1] if mirrored else b.gray)
    at_gray = _at(transform, a, b, a.gray.shape[1], b.gray.shape[1])
    match.score = _agreement(a.gray, gray_b, at_gray)
    colour_b = np.ascontiguousarray(b.colour[:, ::-1] if mirrored else b.colour)
    at_colour = _at(transform, a, b, a.colour.shape[1], b.colour.shape[1])
    match.colour = _colour_shift(a.colour, colour_b, at_colour)
    if match.score < COPY_SCORE or min(match.cover_a, match.cover_b) < MIN_OVERLAP:
        return match
    if match.colour > MAX_COLOUR_SHIFT:
        return match
    inside, kept = max(match.cover_a, match.cover_b), min(match.cover_a, match.cover_b)
    match.kind = "copy" if inside >= MIN_INSIDE and kept >= MIN_KEPT else "overlap"
    return match


def _whole_frame(a: Features, b: Features) -> Match:
    """When corners do not match (stripes, fog, a plain wall, a silhouette whose corners all
    look alike): b in the orientation whose thumbnail is nearest a's, stretched over a,
    compared as the matched pairs are. Finds resized, re-encoded, turned and mirrored
    copies; not crops."""
    import cv2

    height, width = a.gray.shape
    tiny_a = cv2.resize(a.gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    tiny_a = (tiny_a - tiny_a.mean()) / (tiny_a.std() + 1.0)
    nearest = None
    for turn in (0, 90, 180, 270):
        for mirrored in (False, True):
            gray = b.gray[:, ::-1] if mirrored else b.gray
            gray = np.ascontiguousarray(np.rot90(gray, -turn // 90))
            if abs(gray.shape[1] / gray.shape[0] - width / height) > 0.03 * width / height:
                continue
            tiny = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
            gap = float(np.abs(tiny_a - (tiny - tiny.mean()) / (tiny.std() + 1.0)).mean())
            if nearest is None or gap < nearest[0]:
                nearest = (gap, turn, mirrored, gray)
    if nearest is None or nearest[0] > WHOLE_FRAME_GAP:
        return Match(None)
    _, turn, mirrored, gray = nearest
    stretch = np.float64([[width / gray.shape[1], 0, 0], [0, height / gray.shape[0], 0]])
    stretch[:, 2] = 0.5 * (stretch.diagonal() - 1)  # pixel centres in place
    scale = a.width / (b.height if turn in (90, 270) else b.width)
    match = Match(None, 0, 0, scale, turn, mirrored, 1.0, 1.0, _agreement(a.gray, gray, stretch))
    if match.score < COPY_SCORE:
        return match
    colour = b.colour[:, ::-1] if mirrored else b.colour
    colour = np.ascontiguousarray(np.rot90(colour, -turn // 90))
    ch, cw = a.colour.shape[:2]
    fit = cv2.resize(colour, (cw, ch), interpolation=cv2.INTER_AREA)
    match.colour = _colour_shift(a.colour, fit, np.float64([[1, 0, 0], [0, 1, 0]]))
    if match.colour <= MAX_COLOUR_SHIFT:
        match.kind = "copy"
    return match


def _colour_shift(lab_a: np.ndarray, lab_b: np.ndarray, transform: np.ndarray) -> float:
    """The worst cell's a*b* difference once b's channels are fitted to a's: a gain about
    neutral gray (more or less saturation) and a small offset (a colour cast) each. A hue
    rotation or a recolouring cannot be fitted away."""
    import cv2

    height, width = lab_a.shape[:2]
    warped = cv2.warpAffine(lab_b, transform, (width, height), flags=cv2.INTER_LINEAR)
    valid = cv2.warpAffine(np.ones(lab_b.shape[:2], np.uint8), transform, (width, height)) > 0
    cells_a, cells_b = [], []
    rows = np.linspace(0, height, GRID + 1).astype(int)
    cols = np.linspace(0, width, GRID + 1).astype(int)
    for top, bottom in zip(rows[:-1], rows[1:]):
        for left, right in zip(cols[:-1], cols[1:]):
            cell = valid[top:bottom, left:right]
            if cell.size and cell.mean() >= 0.5:
                cells_a.append(lab_a[top:bottom, left:right][cell].mean(axis=0))
                cells_b.append(warped[top:bottom, left:right][cell].mean(axis=0))
    if len(cells_a) < 4:
        return 0.0
    first, second = np.array(cells_a)[:, 1:], np.array(cells_b)[:, 1:]
    fitted = np.empty_like(second)
    for channel in range(2):
        x, y = second[:, channel], first[:, channel]
        spread = x.var()
        gain = ((x - x.mean()) @ (y - y.mean())) / (len(x) * spread) if spread > 1.0 else 1.0
        gain = float(np.clip(gain, *COLOUR_GAIN))  # about neutral gray: saturation
        offset = float(np.clip((y - gain * x).mean(), -COLOUR_OFFSET, COLOUR_OFFSET))  # a cast
        fitted[:, channel] = gain * x + offset
    # Weighted by how colourful each cell is: a recolouring moves the colourful cells, a
    # misplaced edge only one or two, and gray cells say nothing about colour.
    errors = np.hypot(*(first - fitted).T)
    weights = np.hypot(*first.T) + np.hypot(*second.T) + 1.0
    return max(float(errors @ weights / weights.sum()), _hue_turn(lab_a, warped, valid) / 2.0)


def _hue_turn(lab_a: np.ndarray, lab_b: np.ndarray, valid: np.ndarray) -> float:
    """Degrees between the two photos' dominant hues (the mean a*b* direction of their
    colourful pixels), 0 when either has no dominant hue: a recolouring turns it (red to
    purple, blue to green), more saturation or a brighter print does not. A photo in colour
    against its gray version counts as turned all the way."""
    directions, strengths = [], []
    for lab in (lab_a, lab_b):
        chroma = lab[..., 1:][valid]
        strength = np.hypot(chroma[:, 0], chroma[:, 1])
        strengths.append(float(strength.mean()))
    if max(strengths) >= 8.0 and min(strengths) < 0.5 * max(strengths):
        return 180.0  # one in colour, the other (nearly) gray: not a light adjustment
    for lab in (lab_a, lab_b):
        chroma = lab[..., 1:][valid]
        strength = np.hypot(chroma[:, 0], chroma[:, 1])
        colourful = strength >= 6.0
        if colourful.mean() < 0.05:
            return 0.0
        units = chroma[colourful] / strength[colourful, None]
        mean = units.mean(axis=0)
        if np.hypot(*mean) < 0.3:  # hues all round the wheel: no one hue to compare
            return 0.0
        directions.append(math.degrees(math.atan2(mean[1], mean[0])))
    turn = abs(directions[0] - directions[1]) % 360
    return min(turn, 360 - turn)


def _agreement(gray_a: np.ndarray, gray_b: np.ndarray, transform: np.ndarray) -> float:
    """1 - the worst cell's mean difference / SCORE_SPAN, b warped onto a, both blurred, b's
    levels fitted to a's (gain and offset); 0 when too little overlaps to judge."""
    import cv2

    height, width = gray_a.shape
    warped = cv2.warpAffine(gray_b, transform, (width, height), flags=cv2.INTER_AREA)
    valid = cv2.warpAffine(np.full(gray_b.shape, 255, np.uint8), transform, (width, height))
    valid = cv2.erode(valid, np.ones((5, 5), np.uint8)) > 0
    if valid.sum() < 0.05 * width * height:
        return 0.0
    first = cv2.GaussianBlur(gray_a.astype(np.float32), (0, 0), 1.0)
    second = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), 1.0)
    # b's levels mapped onto a's by their ranks over the overlap: a monotone curve takes up
    # brightness, contrast and gamma changes (and clipped highlights) that a gain would not.
    quantiles = np.linspace(0.0, 1.0, 65)
    levels_b = np.quantile(second[valid], quantiles)
    levels_a = np.quantile(first[valid], quantiles)
    fitted = np.interp(second, levels_b, levels_a)
    difference = np.abs(first - fitted)
    worst = 0.0
    rows = np.linspace(0, height, GRID + 1).astype(int)
    cols = np.linspace(0, width, GRID + 1).astype(int)
    for top, bottom in zip(rows[:-1], rows[1:]):
        for left, right in zip(cols[:-1], cols[1:]):
            cell = valid[top:bottom, left:right]
            if cell.size and cell.mean() >= 0.5:
                worst = max(worst, float(difference[top:bottom, left:right][cell].mean()))
    return float(max(0.0, 1.0 - worst / SCORE_SPAN))


def same_pixels(a: Path, b: Path, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Whether two files decode to the very same upright pixels (a PNG and its lossless
    re-save, say): the full decode, so only for pairs whose sizes and hashes agree."""
    try:
        first, second = decode(a, 0, limits).image, decode(b, 0, limits).image
    except BadImage:
        return False
    return first.size == second.size and np.array_equal(np.asarray(first), np.asarray(second))


# --- is a larger member an upscale of a smaller one? ------------------------------------------

UPSCALE_DETAIL = 0.35  # detail above the smaller's resolution / detail in its last octave


def is_upscale(
    path: Path,
    scale: float,
    limits: Limits = DEFAULT_LIMITS,
    smaller: tuple[int, int] | None = None,
) -> bool:
    """Whether the photo at ``path`` has no more detail than a copy ``scale`` times smaller
    (linear): what an upscale of that copy looks like. Its detail finer than the copy's
    resolution is compared with its detail in the octave just coarser; a photo that was
    made larger has almost none of the first. ``smaller``: the copy's exact size when it
    shows the whole photo (the test is sharpest at the very size it was made from)."""
    if scale < 1.15:
        return False
    try:
        decoded = decode(path, 0, limits)
    except BadImage:
        return False
    gray = decoded.image.convert("L")
    cap = 2048  # bounded work: enough to see detail at twice the smaller copy's resolution
    if max(gray.size) > cap:
        shrink = max(gray.size) / cap
        if scale / shrink < 1.3:
            return False  # at a size we can afford, no finer detail is visible
        scale /= shrink
        gray = gray.resize(
            (round(gray.width / shrink), round(gray.height / shrink)), Image.Resampling.BOX
        )
        smaller = None
    pixels = np.asarray(gray, np.float32)
    small = (max(8, round(gray.width / scale)), max(8, round(gray.height / scale)))
    if smaller is not None and all(abs(a - b) <= 2 for a, b in zip(small, smaller)):
        small = smaller
    down = gray.resize(small, Image.Resampling.LANCZOS)
    finer = np.abs(
        pixels - np.asarray(down.resize(gray.size, Image.Resampling.BICUBIC), np.float32)
    ).mean()
    half = down.resize((max(4, small[0] // 2), max(4, small[1] // 2)), Image.Resampling.LANCZOS)
    coarser = np.abs(
        np.asarray(down, np.float32)
        - np.asarray(half.resize(small, Image.Resampling.BICUBIC), np.float32)
    ).mean()
    return bool(coarser > 0.5 and finer < UPSCALE_DETAIL * coarser)


# --- the one to keep -----------------------------------------------------------------------


@dataclass
class Member:
    """What the keep rule knows of one photo in a group."""

    path: str  # as shown (relative or absolute: only its length and order matter)
    width: int
    height: int
    facts: PhotoFacts | None = None
    derived: list[str] = field(default_factory=list)  # how it derives from others

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def quality(self) -> int:
        """Lossless above any JPEG quality; unknown in between the usual qualities."""
        if self.facts is None:
            return 0
        if self.facts.lossless:
            return 101
        return self.facts.quality if self.facts.quality is not None else 0


def derivation(
    big: Member, small: Member, match: Match, upscale: bool
) -> tuple[str | None, str | None]:
    """How the two members of a verified pair derive from each other, as one line for each:
    (what ``big`` is of ``small``, what ``small`` is of ``big``). ``match`` sees small in big;
    ``upscale`` says whether big has no more detail than small."""
    if match.kind not in ("copy", "exact"):
        return None, None
    same_size = abs(match.scale - 1.0) < 0.05 and min(match.cover_a, match.cover_b) > 0.93
    if same_size:
        if big.quality > small.quality + 2 and small.facts is not None and not small.facts.lossless:
            return None, f"a recompression of {big.path} at lower quality"
        if small.quality > big.quality + 2 and big.facts is not None and not big.facts.lossless:
            return f"a recompression of {small.path} at lower quality", None
        return None, None
    if match.cover_a < 0.9 and match.cover_b >= MIN_INSIDE:
        return None, f"a crop of {big.path}"
    if upscale:
        return f"an upscale of {small.path}", None
    return None, None


def _key(member: Member) -> tuple:
    taken = member.facts.taken if member.facts is not None and member.facts.taken else "~"
    exif = member.facts.has_exif if member.facts is not None else False
    return (-member.pixels, -member.quality, not exif, taken, len(member.path), member.path)


KEEP_RULE = (
    "never one derived from another member (an upscale, a lower-quality recompression, a "
    "crop); then the most pixels, then the higher quality (lossless above any JPEG), then "
    "the one with EXIF data, then the earlier capture time, then the shorter path"
)


def choose_keep(members: Sequence[Member]) -> tuple[int, str]:
    """The member to keep (its position) and why, by ``KEEP_RULE``."""
    free = [i for i, m in enumerate(members) if not m.derived]
    pool = free or list(range(len(members)))
    order = sorted(pool, key=lambda i: _key(members[i]))
    keep = order[0]
    kept = members[keep]
    reasons = [f"{m.path} is {m.derived[0]}" for m in members if m.derived and m is not kept]
    if len(order) > 1:
        reasons.append(_why(kept, members[order[1]]))
    elif not reasons:
        reasons.append("the only member")
    return keep, "; ".join(reasons)


def _why(kept: Member, runner_up: Member) -> str:
    if kept.pixels != runner_up.pixels:
        return f"most pixels ({kept.width}x{kept.height})"
    if kept.quality != runner_up.quality:
        if kept.quality == 101:
            return f"lossless ({kept.facts.format if kept.facts else ''})".replace(" ()", "")
        return f"higher JPEG quality (about {kept.quality} against {runner_up.quality})"
    ka, kb = _key(kept), _key(runner_up)
    if ka[2] != kb[2]:
        return "has EXIF data"
    if ka[3] != kb[3]:
        return f"taken earlier ({ka[3]})"
    if ka[4] != kb[4]:
        return "the shorter path"
    return "first by path"
