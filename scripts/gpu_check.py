"""Check the GPU paths of issue 17 on a CUDA machine with torchvision; exit 1 on a failure.

    python3 scripts/gpu_check.py                    # about a minute on one H200
    python3 scripts/gpu_check.py --deps             # only say which imports are missing

What it checks, with a random-weight CLIP ViT-B/32 (benchmarks/index_speed.py's recipe;
no weights can be downloaded there) on photos made by the benchmark's recipe plus a few
special files:

1. nvJPEG decoding (gpudecode): every file the router sends to the GPU decodes there, and
   its embedding agrees with the CPU path's (cosine at least 0.99); pixels, sizes, EXIF
   orientation, hashes and facts agree; PNG, progressive, CMYK and truncated files go to
   the CPU path and come out as the CPU path makes them.
2. The caption search on the GPU (one matrix product and topk) against FAISS: the same ids
   but within 1e-5 ties, scores to 1e-5.
3. ``Index.add()`` end to end with GPU decoding: every photo stored, no file skipped that
   the CPU path stores, image vectors within cosine 0.99 of a CPU-decoded index.
4. ``encode_images_later``: two batches queued one after the other, their vectors read
   after both were queued, equal those of ``encode_images`` one batch at a time.
5. nvJPEG throughput on 12 MP photos (decode + resize + crop to 224, batches of 64), for
   the record beside the issue's 661-738 images/s.

Prints one line per check and a summary; the output belongs in docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

NEEDED = "numpy PIL torch torchvision transformers faiss sqlalchemy platformdirs filelock scipy"
NEEDED += " skimage tqdm"
failures: list[str] = []
DRY = {"run": False}  # --dry-run-on-cpu: Pillow stands in for nvJPEG (to test this script)


def check(ok: bool, what: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        failures.append(what)
    return ok


def missing_modules() -> list[str]:
    gone = []
    for name in NEEDED.split():
        if name == "torchvision" and DRY["run"]:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            gone.append(name)
    return gone


def special_files(folder: Path, photo: Path) -> dict[str, str]:
    """Files the router must tell apart, from one benchmark photo: name -> expected side."""
    from PIL import Image

    image = Image.open(photo).convert("RGB").resize((1600, 1200))
    made = {}

    def save(name: str, side: str, img: Image.Image, **options: object) -> None:
        img.save(folder / name, **options)
        made[name] = side

    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"turned-{orientation}.jpg", "gpu", image, quality=90, exif=exif.tobytes())
    save("grey.jpg", "gpu", image.convert("L"), quality=90)
    save("lossless.png", "cpu", image)
    save("progressive.jpg", "cpu", image, quality=90, progressive=True)
    save("cmyk.jpg", "cpu", image.convert("CMYK"), quality=90)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(out.getvalue()[: len(out.getvalue()) // 2])
    made["truncated.jpg"] = "error"
    return made


def gpu_decoder(model):  # noqa: ANN001, ANN201
    from imgsearch import gpudecode

    return gpudecode.pil_decoder if DRY["run"] else gpudecode.nvjpeg_decoder(model.device)


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_check(folder: Path, model, expected: dict[str, str]) -> None:  # noqa: ANN001
    import numpy as np

    from imgsearch import gpudecode
    from imgsearch.files import FileInfo, load_pixels, walk
    from imgsearch.indexer import Loaded, stack_pixels

    decode = gpu_decoder(model)
    if not check(decode is not None, "torchvision's nvJPEG decoder is available on CUDA"):
        return
    files = sorted(walk(folder), key=lambda f: f.path)
    headers = {f.path: gpudecode.read_header(f, folder) for f in files}
    to_gpu = [h for h in headers.values() if isinstance(h, gpudecode.Header)]
    made = gpudecode.prepare(to_gpu, decode([h.data for h in to_gpu]), model.preprocess)
    synchronize()
    gpu = {h.info.path: p for h, p in zip(to_gpu, made) if p is not None}
    refused = sorted(set(headers) - set(gpu))
    print(f"     {len(gpu)} files decoded by nvJPEG; to the CPU path: {', '.join(refused)}")
    for name, side in expected.items():
        if side == "gpu":
            check(name in gpu, f"{name} is decoded on the GPU")
        else:
            check(name not in gpu, f"{name} goes to the CPU path")
    cpu = {f.path: load_pixels(folder / f.path, model.preprocess) for f in files}
    check(cpu["truncated.jpg"].error.startswith("corrupt image"), "truncated.jpg is refused")
    names = sorted(n for n in gpu if cpu[n].array is not None)  # both decoded it
    check(names == sorted(gpu), "every file nvJPEG decodes, the CPU path decodes too")
    on_gpu = stack_pixels([Loaded(FileInfo(n, 0, 0), gpu[n]) for n in names], model)
    a = model.encode_images(on_gpu).image
    b = model.encode_images(np.stack([cpu[n].array for n in names])).image
    cosines = (a * b).sum(axis=1)
    worst = names[int(cosines.argmin())]
    what = f"cosine min {cosines.min():.4f} ({worst}), mean {cosines.mean():.4f}"
    check(cosines.min() >= 0.99, f"embeddings GPU vs CPU decode: {what} over {len(names)} files")
    gaps, bits, same = [], [], True
    for n in names:
        g, c = gpu[n], cpu[n]
        gaps.append(np.abs(g.array.cpu().numpy().astype(int) - c.array.astype(int)).mean())
        same &= (g.width, g.height, g.hash) == (c.width, c.height, c.hash)
        facts = [(f.orientation, f.quality, f.make) for f in (g.facts, c.facts)]
        same &= facts[0] == facts[1]
        x = np.frombuffer(g.facts.hashes, np.uint8) ^ np.frombuffer(c.facts.hashes, np.uint8)
        bits.append(int(np.unpackbits(x[:8]).sum()))  # the upright hash
    check(same, "sizes (upright), file hashes and EXIF facts are the CPU path's")
    check(max(gaps) < 4, f"pixels GPU vs CPU: mean |diff| at most {max(gaps):.2f} (of 255)")
    what = f"at most {max(bits)} of 64 bits (mean {np.mean(bits):.2f})"
    check(max(bits) <= 8, f"perceptual hash (upright) GPU vs CPU path differs by {what}")


def caption_check(model) -> None:  # noqa: ANN001
    import numpy as np
    import torch

    from imgsearch.captions import CaptionBank

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6197, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bank = CaptionBank([str(i) for i in range(len(vectors))], vectors)
    queries = vectors[rng.integers(0, len(vectors), (256, 3))].sum(1)
    queries += 0.5 * rng.standard_normal(queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    want_scores, want_ids = bank.top(queries, 20)
    scores, ids = bank.top(queries, 20, device=model.device)
    exact = queries.astype(np.float64) @ vectors.astype(np.float64).T
    rows = np.arange(len(queries))[:, None]
    tie = np.abs(exact[rows, ids] - exact[rows, want_ids]).max()
    gap = np.abs(scores - want_scores).max()
    what = f"max score gap {gap:.2e}, ids equal on {(ids == want_ids).mean():.4f}"
    check(gap <= 1e-5 and tie <= 1e-5, f"caption search on {model.device} = FAISS: {what}")
    batch = torch.from_numpy(queries[:128]).to(model.device)
    bank.top_matmul(batch, 20, model.device)
    synchronize()
    start = time.perf_counter()
    for _ in range(20):
        bank.top_matmul(batch, 20, model.device)
    synchronize()
    ms = (time.perf_counter() - start) / 20 * 1000
    print(f"     caption search on the GPU: {ms:.2f} ms per batch of 128 (with the copy back)")


def hash_check(model) -> None:  # noqa: ANN001
    """The perceptual hashes made on the device are the CPU's, bit for bit (the tests check
    the CPU side against scipy; this checks the GPU's arithmetic gives the same bits)."""
    import numpy as np
    import torch

    from imgsearch.gpudecode import torch_hashes

    rng = np.random.default_rng(1)
    small = torch.from_numpy(rng.integers(0, 256, (512, 32, 32), dtype=np.uint8))
    flat = torch.full((4, 32, 32), 128, dtype=torch.uint8)
    batch = torch.cat([small, flat])
    same = torch_hashes(batch.to(model.device)) == torch_hashes(batch)
    check(same, f"perceptual hashes on {model.device} = on the CPU, {len(batch)} thumbnails")


def queued_check(model) -> None:  # noqa: ANN001
    """The indexer queues batch N+1 before it reads batch N's vectors (copied back behind
    the model's kernels, into pinned memory): what it reads must be batch N's, complete."""
    import numpy as np
    import torch

    rng = np.random.default_rng(2)
    side = model.preprocess.crop
    batches = [rng.integers(0, 256, (96, side, side, 3), dtype=np.uint8) for _ in range(2)]
    alone = [model.encode_images(b).image for b in batches]
    later = [model.encode_images_later(torch.from_numpy(b).to(model.device)) for b in batches]
    got = [finish().image for finish in later]
    gap = max(float(np.abs(a - g).max()) for a, g in zip(alone, got))
    what = f"max difference {gap:.1e}"
    check(gap <= 1e-3, f"two batches queued, then read: as encode_images one by one, {what}")


def index_check(folder: Path, model_dir: Path, work: Path) -> None:
    import numpy as np

    import imgsearch.indexer as indexer
    from imgsearch.api import Index

    device = "cpu" if DRY["run"] else "cuda"

    def indexed(name: str, gpu: bool):  # noqa: ANN202
        saved = indexer.nvjpeg_decoder
        if not gpu:
            indexer.nvjpeg_decoder = lambda device: None
        try:
            with Index.create(folder, work / f"{name}.db", str(model_dir), device=device) as ix:
                summary = ix.add(batch_size=64)
                _, paths, vectors = ix.method_vectors("image")
                return summary, dict(zip(paths, vectors))
        finally:
            indexer.nvjpeg_decoder = saved

    cpu_summary, cpu_vectors = indexed("cpu", False)
    gpu_summary, gpu_vectors = indexed("gpu", True)
    stages = gpu_summary.stages
    counts = {k: int(stages.get(f"files_{k}", 0)) for k in ("gpu", "cpu", "refused")}
    print(
        f"     add() with nvJPEG: {gpu_summary.added} added, {len(gpu_summary.skipped)} skipped;"
        f" files {counts}; stages (s) { ({k: round(v, 2) for k, v in stages.items()}) }"
    )
    if not DRY["run"]:
        check(counts["gpu"] > 0, "add() decoded files on the GPU")
    same = gpu_summary.added == cpu_summary.added and sorted(gpu_vectors) == sorted(cpu_vectors)
    check(same, f"add() stores the same {cpu_summary.added} files with and without GPU decoding")
    shared = sorted(cpu_vectors.keys() & gpu_vectors.keys())
    cos = np.array([float(cpu_vectors[p] @ gpu_vectors[p]) for p in shared])
    what = f"cosine min {cos.min():.4f}"
    check(len(cos) > 0 and cos.min() >= 0.99, f"stored image vectors GPU vs CPU decode: {what}")


def throughput(paths: list[Path], model) -> None:  # noqa: ANN001

    from imgsearch import gpudecode
    from imgsearch.files import FileInfo

    decode = gpu_decoder(model)
    headers = [gpudecode.read_header(FileInfo(p.name, 0, 0), p.parent) for p in paths]
    headers = [h for h in headers if isinstance(h, gpudecode.Header)]
    batches = [headers[i : i + 64] for i in range(0, len(headers), 64)]
    gpudecode.prepare(batches[0], decode([h.data for h in batches[0]]), model.preprocess)
    synchronize()
    start = time.perf_counter()
    for batch in batches:
        gpudecode.prepare(batch, decode([h.data for h in batch]), model.preprocess)
    synchronize()
    rate = len(headers) / (time.perf_counter() - start)
    print(
        f"     nvJPEG + resize + crop + hash thumbnail, 12 MP, one thread, bytes in memory: "
        f"{rate:.0f} images/s over {len(headers)} photos (the issue: 661-738 decode + resize)"
    )


def decode_profile(paths: list[Path], model, label: str) -> None:  # noqa: ANN001
    """Where the GPU side's time goes on one thread, bytes in memory: nvJPEG alone, then
    with ``prepare``; and whether nvJPEG lets go of the interpreter lock while it decodes
    (another Python thread keeps counting then, as it does beside an idle one)."""
    import threading

    from imgsearch import gpudecode
    from imgsearch.files import FileInfo

    decode = gpu_decoder(model)
    headers = [gpudecode.read_header(FileInfo(p.name, 0, 0), p.parent) for p in paths[:64]]
    headers = [h for h in headers if isinstance(h, gpudecode.Header)]
    blobs = [h.data for h in headers]
    decode(blobs)
    synchronize()

    def rate(work) -> float:  # noqa: ANN001
        start = time.perf_counter()
        for _ in range(3):
            work()
        synchronize()
        return 3 * len(blobs) / (time.perf_counter() - start)

    alone = rate(lambda: decode(blobs))
    prepared = rate(lambda: gpudecode.prepare(headers, decode(blobs), model.preprocess))

    def count(stop: threading.Event, out: list[int]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
        out.append(n)

    paces = []
    for busy in (False, True):
        stop, out = threading.Event(), []
        thread = threading.Thread(target=count, args=(stop, out))
        start = time.perf_counter()
        thread.start()
        if busy:
            for _ in range(3):
                decode(blobs)
            synchronize()
        else:
            time.sleep(0.3)
        stop.set()
        thread.join()
        paces.append(out[0] / (time.perf_counter() - start))
    print(
        f"     {label}, one thread, {len(blobs)} photos in memory: nvJPEG alone {alone:.0f} "
        f"images/s, with prepare {prepared:.0f}; a Python thread beside nvJPEG runs at "
        f"{paces[1] / paces[0]:.2f} of its pace beside a sleeping one"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deps", action="store_true", help="only list missing imports")
    parser.add_argument("--images", type=int, default=128, help="12 MP photos for throughput")
    parser.add_argument("--dry-run-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    DRY["run"] = args.dry_run_on_cpu
    gone = missing_modules()
    print(f"python {sys.version.split()[0]}; missing imports: {', '.join(gone) or 'none'}")
    if args.deps or gone:
        return 1 if gone else 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from index_speed import make_photos, save_random_clip

    from imgsearch.models import load_model

    if DRY["run"]:
        device = torch.device("cpu")
        print("     dry run on the CPU: Pillow stands in for nvJPEG")
    else:
        if not check(torch.cuda.is_available(), "CUDA is available"):
            return 1
        device = torch.device("cuda")
        print(f"     {torch.cuda.get_device_name()}, torch {torch.__version__}")
    bench = REPO / "bench-out"
    os.environ.setdefault("IMGSEARCH_CACHE_DIR", str(bench / "cache"))
    model_dir = save_random_clip(bench / "clip-vit-b32-random")
    model = load_model(str(model_dir), device)
    big = make_photos(bench / f"photos-{args.images}" / "photos", args.images)
    small = make_photos(bench / "photos-64-640x480" / "photos", 64, (640, 480))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for path in big[:8] + small[:24]:
            shutil.copyfile(path, folder / f"{path.parent.parent.name}-{path.name}")
        expected = special_files(folder, small[0])
        decode_check(folder, model, expected)
        caption_check(model)
        hash_check(model)
        queued_check(model)
        for name in [n for n, side in expected.items() if side == "error"]:
            (folder / name).unlink()  # the end-to-end check compares stored files only
        index_check(folder, model_dir, Path(tmp))
    throughput(big, model)
    decode_profile(big, model, "12 MP")
    decode_profile(small, model, "640x480")
    print()
    print(f"{len(failures)} failed" + (": " + "; ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
