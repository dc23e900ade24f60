"""Write scikit-image's bundled sample photos to a folder, plus a query photo beside it.

Used by the README's first-run command: a fresh machine has no photos of its own to try.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "page",
    "retina",
    "text",
    "moon",
    "grass",
    "gravel",
    "brick",
]


def to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        array = (255 * (array - array.min()) / max(float(np.ptp(array)), 1e-9)).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path, help="where the sample photos go")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        array = loader()
        if isinstance(array, tuple):  # stereo pairs come as (left, right, disparity)
            array = array[0]
        to_image(array).save(args.folder / f"{name}.jpg", quality=92)
    query = args.folder.parent / "cat.jpg"
    to_image(data.chelsea()).crop((50, 20, 350, 280)).save(query, quality=92)
    print(f"wrote {len(list(args.folder.glob('*.jpg')))} photos to {args.folder} and {query}")


if __name__ == "__main__":
    main()
