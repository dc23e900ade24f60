"""Reduced-size JPEG decoding: Pillow's draft mode (what files.decode does) against OpenCV's
IMREAD_REDUCED_COLOR_2/4/8, on the benchmark's photos, one thread, same reduction.

    python benchmarks/decode_speed.py                       # 12 MP and 640x480 photos
    python benchmarks/decode_speed.py --size 640x480 --images 64

Both decode through libjpeg-turbo with its DCT scaling; what is compared is the time per
photo (decode to an RGB array at the reduced size, nothing else) and how far apart the
pixels are (after the model's resize and crop, as the model sees them).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_speed import make_photos, parse_size  # noqa: E402

from imgsearch.files import Preprocess  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MIN_SIDE = 224
PREPROCESS = Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3)
REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def pillow(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (MIN_SIDE, MIN_SIDE))
    return np.asarray(image.convert("RGB"))


def scale_for(width: int, height: int) -> int:
    """The reduction Pillow's draft picks: the largest of 8, 4, 2 keeping both sides >= 224."""
    for scale in (8, 4, 2):
        if -(-width // scale) >= MIN_SIDE and -(-height // scale) >= MIN_SIDE:
            return scale
    return 1


def opencv(data: bytes, scale: int) -> np.ndarray:
    flags = REDUCED[scale] | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def timed(run, blobs: list[bytes], repeat: int) -> float:
    """Best-of-``repeat`` milliseconds per photo."""
    best = []
    for _ in range(repeat):
        start = time.perf_counter()
        for data in blobs:
            run(data)
        best.append((time.perf_counter() - start) * 1000 / len(blobs))
    return min(best)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, action="append")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    print(
        f"opencv {cv2.__version__}, Pillow {Image.__version__}, one thread, best of {args.repeat}"
    )
    header = ("photos", "scale", "pillow ms", "opencv ms", "speed-up", "mean |diff|", "max |diff|")
    print("{:<14}{:>6}{:>11}{:>11}{:>9}{:>12}{:>11}".format(*header))
    for size in args.size or [(4000, 3000), (640, 480)]:
        folder = REPO / "bench-out" / f"photos-{args.images}-{size[0]}x{size[1]}" / "photos"
        if size == (4000, 3000):
            folder = REPO / "bench-out" / f"photos-{args.images}" / "photos"
        paths = make_photos(folder, args.images, size)
        blobs = [p.read_bytes() for p in paths]
        scale = scale_for(*size)
        ms_pil = timed(pillow, blobs, args.repeat)
        ms_cv = timed(lambda d, s=scale: opencv(d, s), blobs, args.repeat)
        gaps = []
        for data in blobs:
            a = PREPROCESS(Image.fromarray(pillow(data))).astype(int)
            b = PREPROCESS(Image.fromarray(opencv(data, scale))).astype(int)
            gaps.append(np.abs(a - b))
        mean = statistics.fmean(float(g.mean()) for g in gaps)
        worst = max(int(g.max()) for g in gaps)
        row = (f"{size[0]}x{size[1]}", scale, ms_pil, ms_cv, f"{ms_pil / ms_cv:.2f}x", mean, worst)
        print("{:<14}{:>6}{:>11.2f}{:>11.2f}{:>9}{:>12.3f}{:>11}".format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
