"""JPEG decoding on the GPU (torchvision's nvJPEG), the CPU decoders taking the rest.

Which path a file takes is decided from its header (``route``): a baseline JPEG in RGB or
grey whose full size is within the limits goes to the GPU; anything else (PNG, WebP, HEIC,
progressive or CMYK JPEGs, a file over a limit, one that is not an image) goes to the CPU
path, which decodes or refuses it exactly as before, and so does a file nvJPEG refuses.

On the device a batch is decoded, turned upright by its EXIF orientation, resized and
cropped as the model's ``Preprocess`` does on the CPU (antialiased, from the full size), and
shrunk to the 32x32 grey image its perceptual hashes are made from, and hashed there
(``torch_hashes``: only the 64 bytes a photo come back); the rest of its photo facts (EXIF,
JPEG quality) come from the header. Each file is read, hashed and its header parsed once, in
a reader process (``read_headers``): its bytes travel to the GPU from there.

torchvision is optional: it is imported only in ``nvjpeg_decoder``. Every other step is
plain torch and runs on CPU tensors as well, which is how CI tests it (with a decoder made
from Pillow): see ``MixedDecoder``.
"""

from __future__ import annotations

import functools
import io
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from imgsearch.files import (
    DEFAULT_LIMITS,
    ORIENTATIONS,
    BadImage,
    FileInfo,
    Limits,
    Pixels,
    Preprocess,
    ends_as_jpeg,
    file_hash,
    photo_facts,
    read_file,
)
from imgsearch.slabs import Job, Slabs

if TYPE_CHECKING:
    import torch

# (uint8 bytes of JPEG files) -> one (3, H, W) uint8 tensor on the device per file, or None
# where the decoder refused that file (it then goes to the CPU path). One with a ``device``
# attribute (nvjpeg_decoder's) runs, with the rest of its batch's preparing, on a side stream.
GpuDecode = Callable[[list[bytes]], list["torch.Tensor | None"]]

# torch.frombuffer warns that a tensor over read-only bytes must not be written to; nvJPEG's
# input tensors never are. Filtered here, at import: a catch_warnings in the decode thread
# would change the filters of every thread.
warnings.filterwarnings("ignore", message="The given buffer is not writable")

HASH_SIDE = 32  # the grey image the perceptual hashes are computed from (files.orientation_hashes)


@dataclass
class Header:
    """A file read for the GPU: its bytes (None where a reader process read it: the GPU's
    thread reads it again, ``MixedDecoder.bytes_of``), their hash, and what its header says."""

    info: FileInfo
    data: bytes | None
    hash: str
    width: int  # as stored, before the EXIF orientation
    height: int
    orientation: int
    facts: Pixels  # width/height upright and the facts without hashes; array None for now
    size: int  # of the bytes read and hashed


def route(image: Image.Image, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """None where the GPU can take a file opened by PIL (not loaded), else why the CPU path
    must: nvJPEG decodes baseline JPEGs in YCbCr or grey; the GPU decodes at full size, so
    the limits apply to the full size (the CPU path may still take it, at reduced size)."""
    if image.format != "JPEG":
        return f"not a JPEG ({image.format})"
    if image.mode not in ("RGB", "L"):
        return f"a {image.mode} JPEG"
    if image.info.get("progressive") or image.info.get("progression"):
        return "a progressive JPEG"
    try:
        limits.check_aspect(*image.size)
        limits.check_pixels(*image.size)
    except BadImage as exc:
        return str(exc)
    return None


def read_header(
    info: FileInfo, root: Path, limits: Limits = DEFAULT_LIMITS, keep_data: bool = True
) -> Header | str:
    """Read and hash a file and check its header: a ``Header`` for the GPU, or why the CPU
    path must take it (then it reads the file again: only the exceptions pay that).
    ``keep_data``: False leaves the bytes out of the header (a reader process's)."""
    try:
        data = read_file(root / info.path, limits.max_file_size, follow_symlinks=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            why = route(image, limits)
            if why is not None:
                return why
            if not ends_as_jpeg(data):  # truncated, or data after its end: the CPU path
                return "a JPEG that does not end with its end marker"
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
            orientation = orientation if orientation in range(1, 9) else 1
            facts = photo_facts(image, None)
    except BadImage as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - the CPU path says what is wrong with it
        return f"unreadable header: {exc}"
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    pixels = Pixels(None, upright[0], upright[1], file_hash(data), facts=facts)
    kept = data if keep_data else None
    return Header(info, kept, pixels.hash, width, height, orientation, pixels, len(data))


# Whether reader processes send each file's bytes back with its header. They do not: the
# process pools' result threads (these bytes, and the CPU decoders' pixels) held the
# interpreter lock in 58% of the samples in which a thread held it during the pipeline
# (py-spy --gil, 640x480 on the H200), copying pipe-fulls and unpickling; the GPU's thread
# reading the file again from the page cache lets go of the lock for the read. The
# benchmark's ``reader-bytes`` variant turns it back on.
READERS_SEND_BYTES = False


def read_headers(
    root: Path, files: Sequence[FileInfo], limits: Limits, keep_data: bool = True
) -> list[Header | str]:
    """``read_header`` for several files in one task, for reader processes: parsing headers
    and EXIF with PIL, in the process that feeds the GPU, held its interpreter lock against
    the model, the caption search and the writer (640x480 on the H200: every stage there
    ran 3-50 times slower than alone)."""
    return [read_header(info, root, limits, keep_data) for info in files]


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) image turned as ``ImageOps.exif_transpose`` turns it for ``orientation``."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:  # PIL's TRANSPOSE
        return image.transpose(-1, -2)
    if orientation == 6:  # ROTATE_270: a quarter turn clockwise
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:  # TRANSVERSE
        return image.flip(-1, -2).transpose(-1, -2)
    if orientation == 8:  # ROTATE_90: a quarter turn counter-clockwise
        return torch.rot90(image, 1, (-2, -1))
    return image


def draft_scale(width: int, height: int, min_side: int) -> int:
    """The reduction (1, 2, 4 or 8) Pillow's draft mode decodes a JPEG at for ``min_side``,
    as the CPU path asks for it: the largest that keeps both sides at or above it."""
    if min_side <= 0:
        return 1
    most = min(width // min_side, height // min_side)
    return next((s for s in (8, 4, 2) if most >= s), 1)


def reduce_like_draft(batch: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float, each ``scale`` x ``scale`` block averaged (partial blocks
    at the edges over what they hold, as libjpeg's sizes round up): what a JPEG decoded at
    1/scale holds, so the GPU path sees the pixels the CPU path's draft decode sees, and
    resizes a 12 MP photo from 500x375 rather than from its full size."""
    import torch.nn.functional as F

    pixels = batch.float()
    if scale == 1:
        return pixels
    return F.avg_pool2d(pixels, scale, scale, ceil_mode=True)


def resize_crop(image: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W), uint8 or float -> (crop, crop, 3) or (B, crop, crop, 3)
    uint8, as ``Preprocess.__call__`` makes it from a PIL image: the short side resized
    (antialiased bicubic, or bilinear where the model's processor says so) and the centre
    cropped, or the whole image stretched."""
    import torch
    import torch.nn.functional as F

    batch = image if image.dim() == 4 else image[None]
    h, w = batch.shape[-2:]
    if preprocess.stretch:
        size = (preprocess.crop, preprocess.crop)
    else:
        scale = preprocess.resize / min(w, h)
        size = (max(preprocess.crop, round(h * scale)), max(preprocess.crop, round(w * scale)))
    out = batch
    if tuple(size) != (h, w):
        mode = "bilinear" if preprocess.resample == Image.Resampling.BILINEAR else "bicubic"
        out = F.interpolate(
            batch.float(), size=size, mode=mode, antialias=True, align_corners=False
        )
    if out.is_floating_point():
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    h, w = out.shape[-2:]
    top, left = (h - preprocess.crop) // 2, (w - preprocess.crop) // 2
    out = out[..., top : top + preprocess.crop, left : left + preprocess.crop]
    out = out.permute(0, 2, 3, 1).contiguous()
    return out if image.dim() == 4 else out[0]


def hash_thumbnail(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W), uint8 or float -> the (32, 32) or (B, 32, 32) uint8 grey
    images the hashes are made of: PIL's grey weights (ITU-R 601), averaged down (area)."""
    import torch
    import torch.nn.functional as F

    batch = image if image.dim() == 4 else image[None]
    weights = torch.tensor([0.299, 0.587, 0.114], device=image.device).view(1, 3, 1, 1)
    grey = (batch.float() * weights).sum(1, keepdim=True)
    small = F.adaptive_avg_pool2d(grey, (HASH_SIDE, HASH_SIDE))[:, 0]
    small = small.round_().clamp_(0, 255).to(torch.uint8)
    return small if image.dim() == 4 else small[0]


# pHash's DCT as one exact product: the 64 lowest frequencies of a 32x32 image X are
# Y[k, l] = sum over (m, n) of X[m, n] * K[k, l, m, n], K = C[k, m] * C[l, n] with C the
# unnormalised DCT-II matrix (scipy's default, 2 cos(pi k (2n + 1) / 64)). K is split as
# hi + lo, hi on a grid of 2**-33 and lo the exact rest (a multiple of 2**-59): with pixels
# of 0 to 255, every product and every partial sum of X @ hi and X @ lo is exact in float64
# (below 2**20 and 2**-14), so each Y is K's sum rounded once, whatever order a BLAS or a
# GPU adds in: the same bits on every device, coefficients that are equal by symmetry come
# out exactly equal, and a turned or mirrored image's are exactly the upright one's
# transposed or with signs flipped (which is how the eight orientations are made).
_HI_GRID, _LO_GRID = 2.0**33, 2.0**59
# Coefficients that are zero (a flat image, a mirror-symmetric or striped one) come out
# within 3e-10 of it here, where scipy's butterflies make them exactly zero: snapped to it.
_ZERO = 2.0**-20
# Each of files.ORIENTATIONS as steps on the last two axes ("T": transpose, "rows": flip
# the rows' order, "cols": the columns'), as numpy's flips and rot90 make it.
_TURN_STEPS = {
    None: (),
    Image.Transpose.FLIP_LEFT_RIGHT: ("cols",),
    Image.Transpose.FLIP_TOP_BOTTOM: ("rows",),
    Image.Transpose.ROTATE_90: ("cols", "T"),
    Image.Transpose.ROTATE_180: ("rows", "cols"),
    Image.Transpose.ROTATE_270: ("T", "cols"),
    Image.Transpose.TRANSPOSE: ("T",),
    Image.Transpose.TRANSVERSE: ("rows", "cols", "T"),
}
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits: the first bit is the highest


@functools.lru_cache(maxsize=1)
def _dct_weights() -> np.ndarray:
    """(1024, 128) float64: a flattened 32x32 image times this is (hi parts, lo parts) of
    its 8x8 lowest DCT-II frequencies, k (down) major."""
    n = np.arange(HASH_SIDE // 2)
    half = 2 * np.cos(np.pi * np.arange(8)[:, None] * (2 * n + 1) / (2 * HASH_SIDE))
    signs = (-1.0) ** np.arange(8)[:, None]
    cos = np.concatenate([half, signs * half[:, ::-1]], axis=1)  # C[k, 31-n] = ±C[k, n] exactly
    kernel = np.einsum("km,ln->klmn", cos, cos).reshape(64, HASH_SIDE * HASH_SIDE)
    hi = np.round(kernel * _HI_GRID) / _HI_GRID
    lo = kernel - hi
    assert np.array_equal(hi + lo, kernel)  # the split loses nothing
    assert np.array_equal(np.round(lo * _LO_GRID) / _LO_GRID, lo)  # lo on its grid
    return np.ascontiguousarray(np.concatenate([hi, lo]).T)


@functools.lru_cache(maxsize=8)
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DCT weights, the signs (+1, -1, ...) and the bit weights, kept on ``device``:
    copied there once, not with every batch."""
    import torch

    weights = torch.from_numpy(_dct_weights()).to(device)
    signs = torch.tensor([1.0, -1.0] * 4, dtype=torch.float64).to(device)
    bit_weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8).to(device)
    return weights, signs, bit_weights


def _turned(low: torch.Tensor, steps: tuple[str, ...]) -> torch.Tensor:
    """(B, 8, 8) DCT coefficients -> those of the images turned by ``steps``: a flip of
    the rows negates the odd rows (k), of the columns the odd columns (l); a transpose
    transposes. All exact."""
    signs = _constants(low.device)[1]
    for step in steps:
        if step == "T":
            low = low.transpose(-1, -2)
        elif step == "rows":
            low = low * signs[:, None]
        else:
            low = low * signs
    return low


def hash_bits(low: torch.Tensor) -> torch.Tensor:
    """(..., 64) float64 coefficients -> (..., 8) uint8: each against the median of its 64
    as numpy's (the mean of the 32nd and 33rd smallest: torch.median is the lower one),
    greater is 1, packed eight to a byte as np.packbits packs them."""
    import torch

    middle = low.sort(dim=-1).values[..., 31:33]
    median = (middle[..., 0:1] + middle[..., 1:2]) / 2
    bits = (low > median).reshape(*low.shape[:-1], 8, 8).to(torch.uint8)
    return (bits * _constants(low.device)[2]).sum(-1).to(torch.uint8)


def dct_low(small: torch.Tensor) -> torch.Tensor:
    """(B, 32, 32) uint8 -> (B, 8, 8) float64 on its device: the lowest DCT-II frequencies
    (scipy's unnormalised ``dct(dct(x, axis=-2), axis=-1)[..., :8, :8]``), each rounded once
    from its exact sum, and those within float noise of zero made zero."""
    import torch

    parts = small.reshape(len(small), -1).to(torch.float64) @ _constants(small.device)[0]
    low = parts[:, :64] + parts[:, 64:]
    return low.masked_fill(low.abs() < _ZERO, 0.0).view(-1, 8, 8)


def torch_hashes(small: torch.Tensor) -> list[bytes]:
    """``files.orientation_hashes`` of a (B, 32, 32) uint8 batch of grey images, bit for
    bit, computed on the tensor's device (the DCT perceptual hash, imagehash.phash, in each
    of the eight orientations): one exact product for the DCT, the orientations from its
    signs and transposes, the medians and bits there too; only the (B, 64) bytes come back."""
    import torch

    if small.shape[0] == 0:
        return []
    low = dct_low(small)
    turned = torch.stack([_turned(low, _TURN_STEPS[t]) for t in ORIENTATIONS], dim=1)
    packed = hash_bits(turned.reshape(len(small), len(ORIENTATIONS), 64))
    return [row.tobytes() for row in packed.reshape(len(small), -1).cpu().numpy()]


def nvjpeg_decoder(device: torch.device) -> GpuDecode | None:
    """torchvision's batched nvJPEG decode on ``device``; None without torchvision or CUDA.
    A batch that fails as a whole is decoded file by file, so one bad file sends only
    itself to the CPU path."""
    if device.type != "cuda":
        return None
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode(blobs: list[bytes]) -> list[torch.Tensor | None]:
        # The files' bytes as they are (decode_jpeg only reads them): a copy of every file
        # into a bytearray cost 0.3 ms a 12 MP photo on this thread.
        tensors = [torch.frombuffer(b, dtype=torch.uint8) for b in blobs]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for tensor in tensors:
                try:
                    out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out

    decode.device = device  # type: ignore[attr-defined]  # MixedDecoder's side stream
    return decode


# Decoded pixels (as float32) prepared together: a group of same-size photos is one tensor
# operation per step, not one per photo (at 640x480 the per-photo launches were the limit).
PREPARE_PIXELS = 48_000_000


def prepare(
    headers: Sequence[Header], decoded: Sequence[torch.Tensor | None], preprocess: Preprocess
) -> list[Pixels | None]:
    """Decoded images to what the model takes (``Pixels.array`` a (crop, crop, 3) uint8
    tensor on the device) with their hashes filled in; None where the decoder refused a
    file or gave the wrong size. Photos of one stored size and orientation are reduced as
    the CPU path's draft decode reduces them, turned upright, resized and cropped together,
    in groups of at most ``PREPARE_PIXELS`` decoded pixels; all their hashes are made on
    the device at once, and only those bytes are copied back."""
    import torch

    out: list[Pixels | None] = [None] * len(headers)
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, (header, image) in enumerate(zip(headers, decoded)):
        if image is None or tuple(image.shape[-2:]) != (header.height, header.width):
            continue
        groups.setdefault((header.height, header.width, header.orientation), []).append(i)
    thumbs: list[tuple[list[int], torch.Tensor]] = []
    for (height, width, orientation), members in groups.items():
        scale = draft_scale(width, height, preprocess.resize)
        step = max(1, PREPARE_PIXELS // (height * width))
        for start in range(0, len(members), step):
            part = members[start : start + step]
            batch = torch.stack([decoded[i] for i in part])  # type: ignore[misc]
            batch = upright(reduce_like_draft(batch, scale), orientation)
            for i, array in zip(part, resize_crop(batch, preprocess)):
                out[i] = replace(headers[i].facts, array=array)
            thumbs.append((part, hash_thumbnail(batch)))
    if thumbs:
        order = [i for part, _ in thumbs for i in part]
        for i, hashes in zip(order, torch_hashes(torch.cat([t for _, t in thumbs]))):
            pixels = out[i]
            assert pixels is not None and pixels.facts is not None
            pixels.facts = replace(pixels.facts, hashes=hashes)
    return out


class MixedDecoder:
    """Files to model-ready pixels, on the GPU and on the CPU at once: each side takes the
    next files when it has room, so the faster one takes the larger share and neither
    waits (issue 17: nvJPEG plus 15 CPU processes beat either alone).

    ``cpu`` runs ``files.load_chunk`` (a process pool beside a GPU: the photos come back
    through shared memory, ``slabs``; a thread pool in tests); ``decode`` is the GPU
    decoder (``nvjpeg_decoder``, or any function of the same shape in tests). Items come out
    in no fixed order as (FileInfo, Pixels); every file comes out exactly once.
    """

    def __init__(
        self,
        root: Path,
        files: Sequence[FileInfo],
        preprocess: Preprocess,
        cpu: Executor,
        decode: GpuDecode,
        limits: Limits = DEFAULT_LIMITS,
        batch_size: int = 64,
        cpu_workers: int = 1,
        chunk: int = 16,
        readers: Executor | None = None,
    ):
        self.root, self.preprocess, self.limits = root, preprocess, limits
        self.cpu, self.decode = cpu, decode
        self.batch_size, self.chunk = batch_size, chunk
        self.cpu_ahead = 2 * cpu_workers  # chunks in flight on the CPU side
        self.readers = readers  # runs read_headers (reader processes); None: four threads
        self._files = iter(files)
        self._total = len(files)
        self._lock = threading.Lock()
        self._refused: queue.SimpleQueue[FileInfo] = queue.SimpleQueue()
        # Photos travel to the consumer a batch or a chunk at a time: one hand-off each
        # through a queue cost, at 640x480 on the H200, about 0.4 ms a photo of the
        # consumer's time among the other threads of its process.
        self._out: queue.Queue = queue.Queue(maxsize=max(8, -(-4 * batch_size // chunk)))
        self._gpu_done = threading.Event()
        self._stop = threading.Event()
        # read, decode: the CPU side's, summed over its workers; gpu_emit: handing the
        # GPU's photos on (waiting on a full queue).
        self.seconds = dict.fromkeys(("read", "decode", "gpu_decode", "read_wait", "gpu_emit"), 0.0)
        # shared: the CPU side's photos that came back through shared memory (``slabs``)
        self.counts = {"gpu": 0, "cpu": 0, "refused": 0, "shared": 0}
        self._threads = [
            threading.Thread(target=self._guard(self._gpu_side), name="imgsearch-gpu-decode"),
            threading.Thread(target=self._guard(self._cpu_side), name="imgsearch-cpu-decode"),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def _take(self, n: int) -> list[FileInfo]:
        with self._lock:
            return [f for _, f in zip(range(n), self._files)]

    def _guard(self, side: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                side()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                self._out.put(exc)

        return run

    def _emit(self, made: list[tuple[FileInfo, Pixels]]) -> None:
        while made and not self._stop.is_set():
            try:
                self._out.put(made, timeout=0.1)
                return
            except queue.Full:
                continue

    def _gpu_side(self) -> None:
        """Read files (``read_headers``, chunks in the reader pool, two batches ahead), send
        refused ones to the CPU side, decode the rest in batches on the device."""
        own = None
        readers = self.readers
        if readers is None:
            readers = own = ThreadPoolExecutor(4, thread_name_prefix="imgsearch-read")
        reading: deque[tuple[list[FileInfo], Future[list[Header | str]]]] = deque()
        ahead = max(2, -(-2 * self.batch_size // self.chunk))  # chunks in flight
        keep = own is not None or READERS_SEND_BYTES  # threads share the bytes
        pending: list[Header] = []
        exhausted = False
        try:
            while not self._stop.is_set():
                while not exhausted and len(reading) < ahead:
                    files = self._take(self.chunk)
                    if not files:
                        exhausted = True
                        break
                    task = readers.submit(read_headers, self.root, files, self.limits, keep)
                    reading.append((files, task))
                if not reading:
                    break
                start = time.perf_counter()
                files, future = reading.popleft()
                got = future.result()
                self.seconds["read_wait"] += time.perf_counter() - start
                for info, header in zip(files, got):
                    if isinstance(header, Header):
                        pending.append(header)
                    else:
                        self._refuse(info)
                if len(pending) >= self.batch_size or (exhausted and not reading):
                    self._decode_batch(pending)
                    pending = []
        finally:
            for _, future in reading:
                future.cancel()
            if own is not None:
                own.shutdown(wait=True, cancel_futures=True)
            self._gpu_done.set()

    def _refuse(self, info: FileInfo) -> None:
        """Send a file the GPU side cannot take to the CPU side."""
        self._refused.put(info)
        self.counts["refused"] += 1

    def bytes_of(self, header: Header) -> bytes | None:
        """A header's file bytes: kept, or read again here (the read lets go of the
        interpreter lock); None where the file is gone or changed size since its hash."""
        if header.data is not None:
            return header.data
        try:
            data = read_file(self.root / header.info.path, self.limits.max_file_size, False)
        except BadImage:
            return None
        return data if len(data) == header.size else None

    def _decode_batch(self, headers: list[Header]) -> None:
        start = time.perf_counter()
        kept = []
        for header in headers:
            data = self.bytes_of(header)
            if data is None:  # the CPU path reads it again and says what is wrong
                self._refuse(header.info)
            else:
                header.data = data
                kept.append(header)
        headers = kept
        if not headers:
            return
        with side_stream(getattr(self.decode, "device", None)) as stream:
            decoded = self.decode([h.data for h in headers])  # type: ignore[misc]
            made = prepare(headers, decoded, self.preprocess)
            if stream is not None:
                # Only this stream's work: a device-wide wait here also waited for the
                # model's batch (ViT-L/14: 110 ms), and held the photos back meanwhile.
                stream.synchronize()
        self.seconds["gpu_decode"] += time.perf_counter() - start
        start = time.perf_counter()
        good: list[tuple[FileInfo, Pixels]] = []
        for header, pixels in zip(headers, made):
            if pixels is None:
                self._refuse(header.info)
            else:
                good.append((header.info, pixels))
        self.counts["gpu"] += len(good)
        self._emit(good)
        self.seconds["gpu_emit"] += time.perf_counter() - start

    def _cpu_side(self) -> None:
        """Decode chunks in the CPU pool, a few ahead; refused files first."""
        pending: list[tuple[list[FileInfo], Job]] = []
        # Slots for the chunks in flight, where the CPU side is a process pool.
        slots = self.cpu_ahead + 1 if isinstance(self.cpu, ProcessPoolExecutor) else 0
        with Slabs(slots, self.chunk, self.preprocess.crop) as slabs:
            try:
                self._cpu_chunks(pending, slabs)
            finally:
                for _, job in pending:
                    job.cancel()
                self.counts["shared"] = slabs.shared

    def _cpu_chunks(self, pending: list[tuple[list[FileInfo], Job]], slabs: Slabs) -> None:
        while not self._stop.is_set():
            while len(pending) < self.cpu_ahead:
                files = self._refused_now() or self._take(self.chunk)
                if not files:
                    break
                paths = [self.root / f.path for f in files]
                pending.append((files, slabs.submit(self.cpu, paths, self.preprocess, self.limits)))
            if not pending:
                if self._gpu_done.is_set() and self._refused.empty():
                    return
                time.sleep(0.005)  # the GPU side may still refuse files: wait for them
                continue
            files, job = pending.pop(0)
            done = list(zip(files, job.result()))
            self.counts["cpu"] += len(done)
            self.seconds["read"] += sum(pixels.read_s for _, pixels in done)
            self.seconds["decode"] += sum(pixels.decode_s for _, pixels in done)
            self._emit(done)

    def _refused_now(self) -> list[FileInfo]:
        out: list[FileInfo] = []
        while len(out) < self.chunk:
            try:
                out.append(self._refused.get_nowait())
            except queue.Empty:
                break
        return out

    def __iter__(self) -> Iterator[tuple[FileInfo, Pixels]]:
        try:
            left = self._total
            while left > 0:
                made = self._next()
                if isinstance(made, BaseException):
                    raise made
                left -= len(made)
                yield from made
        finally:
            self.close()

    def _next(self) -> list[tuple[FileInfo, Pixels]] | BaseException:
        while True:
            try:
                return self._out.get(timeout=1.0)
            except queue.Empty:
                if not any(thread.is_alive() for thread in self._threads) and self._out.empty():
                    return RuntimeError("the decoders stopped with files left to decode")

    def close(self) -> None:
        """Stop both sides (what they hold is dropped) and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


_STREAMS: dict[tuple[str, str], torch.cuda.Stream] = {}


@contextmanager
def side_stream(device: torch.device | None) -> Iterator[torch.cuda.Stream | None]:
    """A CUDA stream of this thread's own (one per thread name) on ``device``, made current
    meanwhile (None and nothing changed off CUDA). nvJPEG and the caption search each run on
    one, beside the
    model's: on one stream each stage's wait for its results (``synchronize``, a copy back)
    waited for every other stage's kernels queued before them."""
    if device is None or device.type != "cuda":
        yield None
        return
    import torch

    # By the thread's name, not its id: each run starts new threads, and a server's runs
    # would otherwise leave a stream behind each.
    key = (threading.current_thread().name, str(device))
    stream = _STREAMS.get(key)
    if stream is None:
        stream = _STREAMS[key] = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        yield stream


def pil_decoder(blobs: list[bytes]) -> list[torch.Tensor | None]:
    """A stand-in for nvJPEG made from Pillow (full-size decode to a CPU tensor), for tests
    and for machines without torchvision: refuses what nvJPEG refuses (not baseline RGB)."""
    import torch

    out: list[torch.Tensor | None] = []
    for data in blobs:
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format != "JPEG" or image.info.get("progressive"):
                    out.append(None)
                    continue
                array = np.array(image.convert("RGB"))
            out.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
        except (OSError, ValueError, SyntaxError):
            out.append(None)
    return out
