"""Make the offline model's packaged text vectors: the default caption bank and the class
prompts, embedded by its sentence encoder, stored as float16 in ``imgsearch/data``.

A first index with the offline model then starts on its photos at once instead of embedding
some 7,000 texts first (48 s to 2 min on a busy 2-core machine). ``offline-vectors.json``
records each file's sha256, the sha256 of the texts it embeds and the weights package's
version; ``imgsearch.models.packaged`` uses a file only when all three still agree. Re-run
after changing ``captions.txt`` or ``vocab/imagenet.txt``, or after new weights.

Usage::

    python scripts/make_offline_vectors.py          # (re)write the files
    python scripts/make_offline_vectors.py --check  # exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from imgsearch.captions import read_bank  # noqa: E402 - after the path is set
from imgsearch.models import offline, packaged  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "imgsearch" / "data"
FILES = {"captions": "offline-captions.f16.npy", "classes": "offline-classes.f16.npy"}


def texts() -> dict[str, list[str]]:
    return {"captions": read_bank(None)[1], "classes": offline.class_prompts()}


def check() -> int:
    stale = [
        name
        for name, listed in texts().items()
        if packaged.packaged_text_vectors(offline.OFFLINE, listed, DATA) is None
    ]
    if stale:
        print(f"out of date: {', '.join(stale)}: run python scripts/make_offline_vectors.py")
        return 1
    print(f"{DATA / packaged.MANIFEST} is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    import numpy as np
    import torch

    model = offline.OfflineModel(torch.device("cpu"))
    entries = []
    for name, listed in texts().items():
        # Embedded afresh (never the packaged or cached vectors), in float32, then stored.
        vectors = np.concatenate(
            [model.encode_texts(listed[i : i + 256]) for i in range(0, len(listed), 256)]
        )
        entries.append((FILES[name], listed, vectors))
        print(f"{name}: {vectors.shape[0]} texts embedded")
    manifest = packaged.write_packaged(DATA, offline.OFFLINE, entries)
    for entry in manifest["files"]:
        size = (DATA / entry["file"]).stat().st_size
        print(f"wrote {entry['file']} ({size / 1e6:.1f} MB, sha256 {entry['sha256'][:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
