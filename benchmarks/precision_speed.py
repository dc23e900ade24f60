"""CLIP's image tower at each CPU precision, in one process, interleaved: images/s and the
cosine of each precision's embeddings to float32's (what ``precision.cpu_precision`` chose
from; docs/performance.md, issue 17).

    python benchmarks/precision_speed.py                          # the random ViT-B/32
    python benchmarks/precision_speed.py --photos DIR --rounds 6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = ("float32", "int8", "bfloat16")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=REPO / "bench-out/photos-64-640x480/photos")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("IMGSEARCH_CACHE_DIR", str(REPO / "bench-out" / "cache"))
    import torch
    from PIL import Image

    sys.path.insert(0, str(REPO / "benchmarks"))
    from index_speed import make_photos, save_random_clip

    from imgsearch.models import load_model
    from imgsearch.models.precision import cpu_flags, cpu_precision

    folder = save_random_clip(REPO / "bench-out" / "clip-vit-b32-random")
    models = {}
    for precision in PRECISIONS:
        os.environ["IMGSEARCH_PRECISION"] = precision
        models[precision] = load_model(str(folder), torch.device("cpu"))
    os.environ.pop("IMGSEARCH_PRECISION")
    photos = make_photos(args.photos, args.batch_size, (640, 480))[: args.batch_size]
    first = models["float32"]
    pixels = np.stack([first.preprocess(Image.open(p).convert("RGB")) for p in photos])
    for model in models.values():
        model.encode_images(pixels)  # warm-up
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(args.rounds):
        for precision, model in models.items():
            start = time.perf_counter()
            model.encode_images(pixels)
            seconds[precision].append(time.perf_counter() - start)
    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni"})
    threads = torch.get_num_threads()
    print(
        f"CPU flags: {' '.join(flags) or 'no bf16/vnni'}; automatic choice: "
        f"{cpu_precision(env={})}; torch {torch.__version__}, {threads} threads"
    )
    reference = first.encode_images(pixels).image
    for precision, model in models.items():
        rates = [len(pixels) / s for s in seconds[precision]]
        cos = (model.encode_images(pixels).image * reference).sum(axis=1)
        each = " ".join(f"{r:.2f}" for r in rates)
        print(
            f"{precision:<9}{max(rates):7.2f} images/s (best of {args.rounds}, batch "
            f"{len(pixels)}; each: {each})  cosine to float32: min {cos.min():.5f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
