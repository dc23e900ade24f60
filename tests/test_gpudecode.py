"""GPU decoding's routing and fallback, on the CPU: which files nvJPEG may take, and that
every other file still goes through the CPU path and comes out once, upright and checked.

CI has no GPU and no torchvision: the device-side steps (turning, resizing, cropping, the
hash thumbnail) are plain torch and run here on CPU tensors, with Pillow standing in for
nvJPEG (``gpudecode.pil_decoder``). scripts/gpu_check.py checks the real decoder on a GPU.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from imgsearch import gpudecode
from imgsearch.files import (
    OVER_LIMIT,
    FileInfo,
    Limits,
    Preprocess,
    file_hash,
    load_pixels,
    orientation_hashes,
    walk,
)
from imgsearch.models.efficientnet import EFFICIENTNET_LITE0_PREPROCESS as PREPROCESS
from tests.conftest import SAMPLES, sample


def jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def oriented(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "test-camera"
    return jpeg(image, exif=exif.tobytes())


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """One of each kind the router tells apart."""
    photo = sample("astronaut").resize((640, 480))
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "baseline.jpg").write_bytes(jpeg(photo))
    (folder / "grey.jpg").write_bytes(jpeg(photo.convert("L")))
    (folder / "turned.jpg").write_bytes(oriented(sample("chelsea").resize((600, 400)), 6))
    photo.save(folder / "lossless.png")
    (folder / "progressive.jpg").write_bytes(jpeg(photo, progressive=True))
    (folder / "cmyk.jpg").write_bytes(jpeg(photo.convert("CMYK")))
    (folder / "broken.jpg").write_bytes(jpeg(photo)[:3000])  # a truncated file
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "huge.jpg").write_bytes(jpeg(photo.resize((3000, 2000))))
    return folder


LIMITS = Limits(max_pixels=2_000_000)  # huge.jpg (6 MP) is over it at full size


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_the_router_sends_only_baseline_rgb_and_grey_jpegs_within_the_limits(mixed: Path):
    def why(name: str) -> str | None:
        return gpudecode.route(opened((mixed / name).read_bytes()), LIMITS)

    assert why("baseline.jpg") is None and why("grey.jpg") is None and why("turned.jpg") is None
    assert why("lossless.png") == "not a JPEG (PNG)"
    assert why("progressive.jpg") == "a progressive JPEG"
    assert why("cmyk.jpg") == "a CMYK JPEG"
    assert why("huge.jpg").startswith(OVER_LIMIT)
    assert gpudecode.route(opened((mixed / "huge.jpg").read_bytes())) is None  # default limits
    thin = jpeg(sample("coffee").resize((2000, 20)))
    assert gpudecode.route(opened(thin), LIMITS).startswith(OVER_LIMIT)  # the aspect limit


def run_mixed(folder: Path, decode=gpudecode.pil_decoder, preprocess=PREPROCESS):
    files = sorted(walk(folder), key=lambda f: f.path)
    with ThreadPoolExecutor(2) as cpu:
        mixed = gpudecode.MixedDecoder(
            folder, files, preprocess, cpu, decode, LIMITS, batch_size=3, chunk=2
        )
        out = dict((info.path, pixels) for info, pixels in mixed)
    return files, out, mixed


def test_every_file_comes_out_once_the_refused_ones_through_the_cpu_path(mixed: Path):
    files, out, decoder = run_mixed(mixed)
    assert sorted(out) == sorted(f.path for f in files)
    assert decoder.counts["cpu"] + decoder.counts["gpu"] == len(files)
    cpu = {f.path: load_pixels(mixed / f.path, PREPROCESS, LIMITS) for f in files}
    for path, pixels in out.items():
        expected = cpu[path]
        assert pixels.error == expected.error, path
        assert pixels.hash == expected.hash, path
        if expected.error:
            continue
        assert pixels.hash == file_hash((mixed / path).read_bytes())
        assert (pixels.width, pixels.height) == (expected.width, expected.height), path
        array = np.asarray(pixels.array)
        assert array.shape == (224, 224, 3) and array.dtype == np.uint8
        # The GPU side averages blocks as the CPU's reduced decode does, then resizes.
        gap = np.abs(array.astype(int) - expected.array.astype(int)).mean()
        assert gap < 4, (path, gap)
        facts, want = pixels.facts, expected.facts
        assert facts is not None and want is not None
        assert (facts.format, facts.orientation, facts.make, facts.quality) == (
            want.format,
            want.orientation,
            want.make,
            want.quality,
        )
        # Hashes from the device's 32x32 thumbnail: nearly the CPU path's (a few bits).
        got, expected_hashes = (np.frombuffer(h, np.uint8) for h in (facts.hashes, want.hashes))
        bits = np.unpackbits(got ^ expected_hashes)
        assert len(facts.hashes) == 64 and bits.sum() <= 8 * 6, (path, bits.sum())
    assert out["broken.jpg"].error.startswith("corrupt image")
    assert out["garbage.jpg"].error == "not an image"
    # Over the limit at full size, so not for the GPU; the CPU path's reduced decode is
    # within it (6 MP at 1/4 scale).
    assert not out["huge.jpg"].error and isinstance(out["huge.jpg"].array, np.ndarray)
    # Either side may take a file the GPU can decode (whichever has room first); the rest
    # only ever come out of the CPU path.
    on_gpu = {p for p, px in out.items() if isinstance(px.array, torch.Tensor)}
    assert on_gpu <= {"baseline.jpg", "grey.jpg", "turned.jpg"}
    headers = {f.path: gpudecode.read_header(f, mixed, LIMITS) for f in files}
    # A truncated JPEG has a good header but no end marker: nvJPEG would fill it in (it did
    # on the H200), so it goes to the CPU path, which says it is truncated.
    assert {p for p, h in headers.items() if isinstance(h, gpudecode.Header)} == {
        "baseline.jpg",
        "grey.jpg",
        "turned.jpg",
    }
    assert "end marker" in headers["broken.jpg"]


def test_exif_orientation_is_applied_on_the_device(mixed: Path):
    _, out, _ = run_mixed(mixed)
    turned = out["turned.jpg"]
    assert (turned.width, turned.height) == (400, 600)  # upright: taller than wide
    assert turned.facts is not None and turned.facts.orientation == 6
    upright = ImageOps.exif_transpose(Image.open(mixed / "turned.jpg")).convert("RGB")
    want = PREPROCESS(upright)
    assert np.abs(np.asarray(turned.array).astype(int) - want.astype(int)).mean() < 4


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_as_pil_does(orientation: int):
    image = Image.fromarray(np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3))
    exif = Image.Exif()
    exif[0x0112] = orientation
    reopened = opened(jpeg(image, exif=exif.tobytes()))
    want = np.asarray(ImageOps.exif_transpose(reopened).convert("RGB"))
    tensor = torch.from_numpy(np.array(reopened.convert("RGB"))).permute(2, 0, 1)
    got = gpudecode.upright(tensor, orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)


def test_a_decoder_that_refuses_files_sends_them_to_the_cpu_path(mixed: Path):
    def refuses_all(blobs: list[bytes]) -> list:
        return [None] * len(blobs)

    files, out, decoder = run_mixed(mixed, refuses_all)
    assert decoder.counts["gpu"] == 0 and decoder.counts["cpu"] == len(files)
    assert not out["baseline.jpg"].error and isinstance(out["baseline.jpg"].array, np.ndarray)


def test_a_decoder_error_reaches_the_consumer(mixed: Path):
    def fails(blobs: list[bytes]) -> list:
        raise MemoryError("out of device memory")

    with pytest.raises(MemoryError, match="device memory"):
        run_mixed(mixed, fails)


def cpu_hashes(small: np.ndarray) -> list[bytes]:
    return [orientation_hashes(Image.fromarray(s, "L")) for s in small]


def generated_thumbnails() -> np.ndarray:
    """Drawn 32x32 images: flat ones and ones whose DCT has many coefficients that are
    exactly zero (scipy makes them exactly zero), so that ties at the median decide bits."""
    m, n = np.mgrid[:32, :32]
    images = [np.full((32, 32), c) for c in (0, 1, 7, 128, 254, 255)]
    images += [
        n * 8,  # gradients
        m * 8,
        (m + n) * 4,
        np.where(n < 16, 0, 255),  # halves
        np.where(m < 11, 40, 200),
        ((m // 4 + n // 4) % 2) * 255,  # checkerboards
        ((m + n) % 2) * 255,
        (n % 3 == 0) * 255,  # stripes
        (abs(m - 15.5) < 8) & (abs(n - 15.5) < 8),  # a centred square, a disc, rings
        ((m - 15.5) ** 2 + (n - 15.5) ** 2 < 100) * 255,
        np.hypot(m - 15.5, n - 15.5) * 10,
        np.where(n < 10, 50, 51),  # almost flat
    ]
    rng = np.random.default_rng(3)
    images += list(rng.integers(100, 103, (20, 32, 32)))  # three grey levels
    images += list(rng.integers(0, 2, (20, 32, 32)) * 255)  # black and white
    return np.stack(images).astype(np.uint8)


def photo_thumbnails() -> np.ndarray:
    return np.stack([np.asarray(sample(name).convert("L").resize((32, 32))) for name in SAMPLES])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_hashes_are_the_cpu_paths_hashes_in_every_orientation(orientation: int):
    """Real photos' and drawn images' thumbnails, turned as an EXIF orientation turns them:
    the same 64 bytes as files.orientation_hashes, bit for bit."""
    small = torch.from_numpy(np.concatenate([photo_thumbnails(), generated_thumbnails()]))
    turned = gpudecode.upright(small, orientation).contiguous()
    assert gpudecode.torch_hashes(turned) == cpu_hashes(turned.numpy())


def test_device_hashes_are_the_cpu_paths_hashes_for_random_thumbnails():
    small = np.random.default_rng(0).integers(0, 256, (600, 32, 32), dtype=np.uint8)
    assert gpudecode.torch_hashes(torch.from_numpy(small)) == cpu_hashes(small)
    assert gpudecode.torch_hashes(torch.zeros(0, 32, 32, dtype=torch.uint8)) == []


def test_flat_images_hash_as_numpy_hashes_them():
    """A flat image's 63 higher frequencies are all zero: the median is zero and only its
    mean (the first bit) is above it, in every orientation; black has no bit set."""
    flat = np.stack([np.full((32, 32), c, np.uint8) for c in (0, 128)])
    got = gpudecode.torch_hashes(torch.from_numpy(flat))
    assert got == cpu_hashes(flat)
    assert got == [bytes(64), (b"\x80" + bytes(7)) * 8]


def numpy_bits(low: np.ndarray) -> np.ndarray:
    return np.packbits(low > np.median(low, axis=-1, keepdims=True), axis=-1)


def test_the_median_and_the_bits_are_numpys():
    """Against np.median (the mean of the 32nd and 33rd smallest, as float64 adds them) and
    np.packbits, on the values where that matters: equal values at the middle, many equal
    values, and two neighbouring floats whose mean rounds to the larger one, which is then
    not above the median (torch.median, the lower of the two, would say it is)."""
    rng = np.random.default_rng(1)
    rows = [rng.normal(0, 1000, 64)]
    tied = rng.normal(0, 1000, 64)
    tied[np.argsort(tied)[31:34]] = 5.0  # the 32nd to 34th equal
    rows.append(tied)
    rows.append(np.r_[1000.0, np.zeros(63)])  # a flat image's coefficients
    rows.append(np.r_[np.zeros(40), np.ones(24)])
    rows.append(np.r_[-np.ones(32), np.ones(32)])
    close = rng.normal(0, 1000, 64)
    order = np.argsort(close)
    close[order[:31]], close[order[33:]] = -100.0, 100.0
    a = 1 + 2.0**-52
    close[order[31]], close[order[32]] = a, np.nextafter(a, 2)  # (a + b) / 2 rounds to b
    rows.append(close)
    low = np.stack(rows)
    got = gpudecode.hash_bits(torch.from_numpy(low)).numpy()
    assert np.array_equal(got, numpy_bits(low))
    lower = torch.from_numpy(close).median()  # what the median must not be
    assert not np.array_equal(np.packbits(close > lower.item()), numpy_bits(close))


def test_the_dct_is_scipys_rounded_once_in_any_order():
    """The low DCT block is scipy's to float noise; each coefficient is rounded once from
    an exact sum, so the pixels added in any order give the same bits, and a mirrored or
    transposed image's coefficients are exactly the upright one's with signs flipped or
    transposed (scipy's own rounding may differ between those)."""
    from scipy.fft import dct

    rng = np.random.default_rng(2)
    small = np.concatenate([photo_thumbnails(), rng.integers(0, 256, (50, 32, 32))])
    small = torch.from_numpy(small.astype(np.uint8))
    low = gpudecode.dct_low(small)
    want = dct(dct(small.numpy().astype(np.float64), axis=1), axis=2)[:, :8, :8]
    assert np.abs(low.numpy() - want).max() < 1e-8
    weights = torch.from_numpy(gpudecode._dct_weights())
    shuffle = torch.from_numpy(rng.permutation(32 * 32))
    pixels = small.reshape(len(small), -1).double()
    for order in (shuffle, shuffle.flip(0)):
        parts = pixels[:, order] @ weights[order]
        assert torch.equal(parts, pixels @ weights)
    signs = torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)
    assert torch.equal(gpudecode.dct_low(small.transpose(1, 2).contiguous()), low.transpose(1, 2))
    assert torch.equal(gpudecode.dct_low(small.flip(2).contiguous()), low * signs)
    assert torch.equal(gpudecode.dct_low(small.flip(1).contiguous()), low * signs[:, None])


def test_coefficients_equal_by_symmetry_stay_equal():
    """Where scipy's rounding splits two equal coefficients at the median (a transposed
    image's (2, 4) and (4, 2), 1e-12 apart) its bits depend on that rounding; here they
    stay equal, and neither is above their median, as numpy's rule says of equal values."""
    m, n = np.mgrid[:32, :32]
    small = torch.from_numpy(((m * n) % 256).astype(np.uint8))[None]
    low = gpudecode.dct_low(small)[0]
    assert low[2, 4] == low[4, 2]
    middle = low.flatten().sort().values[31:33]
    assert middle[0] == middle[1] == low[2, 4]
    bits = np.unpackbits(np.frombuffer(gpudecode.torch_hashes(small)[0][:8], np.uint8))
    assert bits[2 * 8 + 4] == bits[4 * 8 + 2] == 0


def test_resize_and_crop_match_preprocess_and_stretch():
    photo = sample("rocket")  # 427x640
    array = torch.from_numpy(np.asarray(photo)).permute(2, 0, 1)
    stretched = Preprocess(224, 224, (0.5,) * 3, (0.5,) * 3, stretch=True)
    for preprocess in (PREPROCESS, stretched):
        got = gpudecode.resize_crop(array, preprocess).numpy()
        want = preprocess(photo)
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 1.5


def test_no_torchvision_or_no_cuda_means_no_gpu_decoder():
    assert gpudecode.nvjpeg_decoder(torch.device("cpu")) is None
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert gpudecode.nvjpeg_decoder(torch.device("cuda")) is None


def test_the_gpu_paths_pixels_embed_like_the_cpu_paths(mixed: Path, tiny_clip: Path):
    """A batch of device tensors (here CPU tensors) goes through the model as arrays do."""
    from imgsearch.indexer import Loaded, stack_pixels
    from imgsearch.models import load_model

    model = load_model(str(tiny_clip), torch.device("cpu"))
    _, out, _ = run_mixed(mixed, preprocess=model.preprocess)
    good = [FileInfo(p, 0, 0) for p in ("baseline.jpg", "grey.jpg", "turned.jpg")]
    items = [Loaded(f, out[f.path]) for f in good]
    batch = stack_pixels(items, model)
    assert isinstance(batch, torch.Tensor) and batch.shape[0] == 3
    cpu_items = [Loaded(f, load_pixels(mixed / f.path, model.preprocess, LIMITS)) for f in good]
    a = model.encode_images(batch).image
    b = model.encode_images(stack_pixels(cpu_items, model)).image
    assert (a * b).sum(axis=1).min() > 0.99


def test_the_device_reduces_a_big_photo_as_the_cpu_paths_draft_decode_does():
    """A 6 MP JPEG: Pillow's draft decodes it at 1/4 for this model; the device, decoding
    it whole, averages 4x4 blocks to the same size and nearly the same pixels, and the
    model's crop is then the CPU path's to within a quarter of a level."""
    data = jpeg(sample("astronaut").resize((3000, 2000)))
    full = torch.from_numpy(np.array(opened(data).convert("RGB"))).permute(2, 0, 1)
    draft = opened(data)
    draft.draft("RGB", (PREPROCESS.resize, PREPROCESS.resize))
    want = np.asarray(draft.convert("RGB")).astype(int)
    scale = gpudecode.draft_scale(3000, 2000, PREPROCESS.resize)
    assert scale == 4 and want.shape == (500, 750, 3)
    reduced = gpudecode.reduce_like_draft(full[None], scale)
    assert np.abs(reduced[0].permute(1, 2, 0).numpy() - want).mean() < 1.0
    crop = gpudecode.resize_crop(reduced, PREPROCESS)[0].numpy().astype(int)
    cpu = PREPROCESS(Image.fromarray(want.astype(np.uint8))).astype(int)
    assert np.abs(crop - cpu).mean() < 0.5


def test_photos_prepared_together_are_prepared_as_one_at_a_time(mixed: Path):
    """Same-size photos are one tensor operation per step; the result is each photo's own."""
    files = sorted(walk(mixed), key=lambda f: f.path)
    headers = [gpudecode.read_header(f, mixed, LIMITS) for f in files]
    headers = [h for h in headers if isinstance(h, gpudecode.Header)]
    headers = headers + headers  # two groups of one size and orientation, and one turned
    decoded = gpudecode.pil_decoder([h.data for h in headers])
    together = gpudecode.prepare(headers, decoded, PREPROCESS)
    alone = [gpudecode.prepare([h], [d], PREPROCESS)[0] for h, d in zip(headers, decoded)]
    assert len(together) == len(alone) == 6
    for a, b in zip(together, alone):
        assert a is not None and b is not None
        assert torch.equal(a.array, b.array) and a.facts.hashes == b.facts.hashes


def test_the_indexers_decode_stage_reads_headers_in_processes(mixed: Path):
    """``indexer.mixed_decoder``: the GPU side's headers come from reader processes (the
    bytes read again by the GPU's thread), the CPU side's photos through shared memory, and
    every file still comes out once, as the threads make it."""
    from imgsearch.indexer import mixed_decoder

    files, threads_out, _ = run_mixed(mixed)
    decoder = mixed_decoder(mixed, files, PREPROCESS, gpudecode.pil_decoder, LIMITS, 3, 1)
    out = {info.path: pixels for info, pixels in decoder}
    assert sorted(out) == sorted(f.path for f in files)
    assert decoder.counts["gpu"] >= 1 and decoder.counts["refused"] >= 1
    # The PNG, the progressive and the CMYK JPEG at least: their pixels came back from the
    # CPU processes through shared memory.
    assert decoder.counts["shared"] >= 3
    for path, pixels in out.items():
        assert (pixels.error, pixels.hash) == (threads_out[path].error, threads_out[path].hash)


def test_a_reader_process_header_is_read_again_and_a_changed_file_refused(mixed: Path):
    """A reader process hashes the file and sends back its header without the bytes; the
    GPU's thread reads them again, and a file that changed size meanwhile (or is gone)
    goes to the CPU path rather than decoding other bytes than those hashed."""
    path = mixed / "baseline.jpg"
    info = next(f for f in walk(mixed) if f.path == "baseline.jpg")
    header = gpudecode.read_header(info, mixed, LIMITS, keep_data=False)
    assert header.data is None and header.size == path.stat().st_size
    assert header.hash == file_hash(path.read_bytes())
    with ThreadPoolExecutor(1) as cpu:
        decoder = gpudecode.MixedDecoder(mixed, [], PREPROCESS, cpu, gpudecode.pil_decoder)
        assert decoder.bytes_of(header) == path.read_bytes()
        with path.open("ab") as grown:
            grown.write(b"more")
        assert decoder.bytes_of(header) is None
        path.unlink()
        assert decoder.bytes_of(header) is None
        decoder._decode_batch([header])
        assert decoder._refused_now() == [info] and decoder.counts["refused"] == 1
        decoder.close()


def test_a_batch_of_device_and_host_photos_keeps_the_items_order():
    """CPU-decoded arrays reach the device in one copy, each in its own row."""
    from imgsearch.files import Pixels
    from imgsearch.indexer import Loaded, stack_pixels

    class Model:
        device = torch.device("cpu")

    arrays = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    made = [torch.from_numpy(a) if i % 2 else a for i, a in enumerate(arrays)]
    items = [Loaded(FileInfo(f"{i}.jpg", 0, 0), Pixels(a)) for i, a in enumerate(made)]
    batch = stack_pixels(items, Model())  # type: ignore[arg-type]
    assert isinstance(batch, torch.Tensor)
    assert batch[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert isinstance(stack_pixels(items[::2], Model()), np.ndarray)  # all on the host


def test_decode_pools_bring_results_back_through_a_roomy_pipe():
    """A chunk of decoded photos is megabytes: the pool's result pipe is enlarged (Linux: to
    1 MB unprivileged) so that the thread reading it seldom needs the interpreter lock back."""
    import fcntl

    from imgsearch.indexer import _process_pool

    pool = _process_pool(1, "test-pipe")
    reader = pool._result_queue._reader  # type: ignore[attr-defined]
    assert fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ) >= 1 << 20
    assert pool.submit(sum, [1, 2]).result() == 3
