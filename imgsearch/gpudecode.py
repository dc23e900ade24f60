"""JPEG decoding on the GPU (torchvision's nvJPEG), the CPU decoders taking the rest.

Which path a file takes is decided from its header (``route``): a baseline JPEG in RGB or
grey whose full size is within the limits goes to the GPU; anything else (PNG, WebP, HEIC,
progressive or CMYK JPEGs, a file over a limit, one that is not an image) goes to the CPU
path, which decodes or refuses it exactly as before, and so does a file nvJPEG refuses.

On the device a batch is decoded, turned upright by its EXIF orientation, resized and
cropped as the model's ``Preprocess`` does on the CPU (antialiased, from the full size), and
shrunk to the 32x32 grey image its perceptual hashes are made from; the rest of its photo
facts (EXIF, JPEG quality) come from the header. Each file is read, hashed and its header
parsed once, in a reader process (``read_headers``): its bytes travel to the GPU from there.

torchvision is optional: it is imported only in ``nvjpeg_decoder``. Every other step is
plain torch and runs on CPU tensors as well, which is how CI tests it (with a decoder made
from Pillow): see ``MixedDecoder``.
"""

from __future__ import annotations

import io
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
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
    load_chunk,
    photo_facts,
    read_file,
)

if TYPE_CHECKING:
    import torch

# (uint8 bytes of JPEG files) -> one (3, H, W) uint8 tensor on the device per file, or None
# where the decoder refused that file (it then goes to the CPU path).
GpuDecode = Callable[[list[bytes]], list["torch.Tensor | None"]]

# torch.frombuffer warns that a tensor over read-only bytes must not be written to; nvJPEG's
# input tensors never are. Filtered here, at import: a catch_warnings in the decode thread
# would change the filters of every thread.
warnings.filterwarnings("ignore", message="The given buffer is not writable")

HASH_SIDE = 32  # the grey image the perceptual hashes are computed from (files.orientation_hashes)


@dataclass
class Header:
    """A file read for the GPU: its bytes, their hash, and what its header says."""

    info: FileInfo
    data: bytes
    hash: str
    width: int  # as stored, before the EXIF orientation
    height: int
    orientation: int
    facts: Pixels  # width/height upright and the facts without hashes; array None for now


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


def read_header(info: FileInfo, root: Path, limits: Limits = DEFAULT_LIMITS) -> Header | str:
    """Read and hash a file and check its header: a ``Header`` for the GPU, or why the CPU
    path must take it (then it reads the file again: only the exceptions pay that)."""
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
    return Header(info, data, pixels.hash, width, height, orientation, pixels)


def read_headers(root: Path, files: Sequence[FileInfo], limits: Limits) -> list[Header | str]:
    """``read_header`` for several files in one task, for reader processes: parsing headers
    and EXIF with PIL, in the process that feeds the GPU, held its interpreter lock against
    the model, the caption search and the writer (640x480 on the H200: every stage there
    ran 3-50 times slower than alone). Each file's bytes travel back with its header."""
    return [read_header(info, root, limits) for info in files]


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


def batch_hashes(small: np.ndarray) -> list[bytes]:
    """``files.orientation_hashes`` for a (B, 32, 32) uint8 batch of grey images at once:
    the same DCT perceptual hash (imagehash.phash) in each of the eight orientations."""
    import scipy.fftpack

    turned = []
    for turn in ORIENTATIONS:
        if turn is None:
            turned.append(small)
        elif turn == Image.Transpose.FLIP_LEFT_RIGHT:
            turned.append(small[:, :, ::-1])
        elif turn == Image.Transpose.FLIP_TOP_BOTTOM:
            turned.append(small[:, ::-1, :])
        elif turn == Image.Transpose.ROTATE_90:
            turned.append(np.rot90(small, 1, (1, 2)))
        elif turn == Image.Transpose.ROTATE_180:
            turned.append(np.rot90(small, 2, (1, 2)))
        elif turn == Image.Transpose.ROTATE_270:
            turned.append(np.rot90(small, 3, (1, 2)))
        elif turn == Image.Transpose.TRANSPOSE:
            turned.append(small.transpose(0, 2, 1))
        else:  # TRANSVERSE
            turned.append(np.rot90(small, 2, (1, 2)).transpose(0, 2, 1))
    pixels = np.stack(turned, axis=1).astype(np.float64)  # (B, 8, 32, 32)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=2), axis=3)[:, :, :8, :8]
    low = dct.reshape(*dct.shape[:2], 64)
    bits = low > np.median(low, axis=2, keepdims=True)
    return [np.packbits(row.reshape(8, 64), axis=1).tobytes() for row in bits]


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
    in groups of at most ``PREPARE_PIXELS`` decoded pixels."""
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
        small = torch.cat([t for _, t in thumbs]).cpu().numpy()
        for i, hashes in zip(order, batch_hashes(small)):
            pixels = out[i]
            assert pixels is not None and pixels.facts is not None
            pixels.facts = replace(pixels.facts, hashes=hashes)
    return out


class MixedDecoder:
    """Files to model-ready pixels, on the GPU and on the CPU at once: each side takes the
    next files when it has room, so the faster one takes the larger share and neither
    waits (issue 17: nvJPEG plus 15 CPU processes beat either alone).

    ``cpu`` runs ``files.load_chunk`` (a process pool beside a GPU); ``decode`` is the GPU
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
        self._out: queue.Queue = queue.Queue(maxsize=max(4 * batch_size, 256))
        self._gpu_done = threading.Event()
        self._stop = threading.Event()
        # read, decode: the CPU side's, summed over its workers; gpu_emit: handing the
        # GPU's photos on (waiting on a full queue).
        self.seconds = dict.fromkeys(("read", "decode", "gpu_decode", "read_wait", "gpu_emit"), 0.0)
        self.counts = {"gpu": 0, "cpu": 0, "refused": 0}
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

    def _emit(self, info: FileInfo, pixels: Pixels) -> None:
        while not self._stop.is_set():
            try:
                self._out.put((info, pixels), timeout=0.1)
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
        pending: list[Header] = []
        exhausted = False
        try:
            while not self._stop.is_set():
                while not exhausted and len(reading) < ahead:
                    files = self._take(self.chunk)
                    if not files:
                        exhausted = True
                        break
                    reading.append(
                        (files, readers.submit(read_headers, self.root, files, self.limits))
                    )
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
                        self._refused.put(info)
                        self.counts["refused"] += 1
                if len(pending) >= self.batch_size or (exhausted and not reading):
                    self._decode_batch(pending)
                    pending = []
        finally:
            for _, future in reading:
                future.cancel()
            if own is not None:
                own.shutdown(wait=True, cancel_futures=True)
            self._gpu_done.set()

    def _decode_batch(self, headers: list[Header]) -> None:
        if not headers:
            return
        start = time.perf_counter()
        decoded = self.decode([h.data for h in headers])
        made = prepare(headers, decoded, self.preprocess)
        if made and made[0] is not None and hasattr(made[0].array, "device"):
            _synchronize(made[0].array)
        self.seconds["gpu_decode"] += time.perf_counter() - start
        start = time.perf_counter()
        for header, pixels in zip(headers, made):
            if pixels is None:
                self._refused.put(header.info)
                self.counts["refused"] += 1
            else:
                self.counts["gpu"] += 1
                self._emit(header.info, pixels)
        self.seconds["gpu_emit"] += time.perf_counter() - start

    def _cpu_side(self) -> None:
        """Decode chunks in the CPU pool, a few ahead; refused files first."""
        pending: list[tuple[list[FileInfo], Future[list[Pixels]]]] = []
        while not self._stop.is_set():
            while len(pending) < self.cpu_ahead:
                files = self._refused_now() or self._take(self.chunk)
                if not files:
                    break
                paths = [self.root / f.path for f in files]
                future = self.cpu.submit(load_chunk, paths, self.preprocess, self.limits)
                pending.append((files, future))
            if not pending:
                if self._gpu_done.is_set() and self._refused.empty():
                    return
                time.sleep(0.005)  # the GPU side may still refuse files: wait for them
                continue
            files, future = pending.pop(0)
            for info, pixels in zip(files, future.result()):
                self.counts["cpu"] += 1
                self.seconds["read"] += pixels.read_s
                self.seconds["decode"] += pixels.decode_s
                self._emit(info, pixels)

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
            for _ in range(self._total):
                item = self._next()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def _next(self) -> tuple[FileInfo, Pixels] | BaseException:
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


def _synchronize(tensor: torch.Tensor) -> None:
    """Wait for the device, so that the GPU's share of the time is counted where it is spent."""
    if tensor.device.type == "cuda":
        import torch

        torch.cuda.synchronize(tensor.device)


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
