"""Files on disk: which ones are images, and decoding them cheaply and safely."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
)

try:  # HEIC/HEIF only with the optional extra (pillow-heif)
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF = True
except ImportError:  # pragma: no cover - depends on the extra
    HEIF = False


@dataclass(frozen=True)
class FileInfo:
    """A file found by the walk: path relative to the root (POSIX form), size and mtime."""

    path: str
    size: int
    mtime_ns: int


def is_image_name(name: str) -> bool:
    suffix = os.path.splitext(name)[1].lower()
    if suffix in (".heic", ".heif"):
        return HEIF
    return suffix in IMAGE_SUFFIXES


def walk(root: Path) -> Iterator[FileInfo]:
    """Image files below ``root``: hidden entries skipped, symbolic links never followed.

    ``os.scandir`` gives the stat results the incremental check needs without
    a second system call per file, which keeps a no-change re-run about as
    fast as listing the folder.
    """
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) and is_image_name(entry.name):
                    st = entry.stat(follow_symlinks=False)
                    rel = Path(entry.path).relative_to(root).as_posix()
                    yield FileInfo(rel, st.st_size, st.st_mtime_ns)
            except OSError:
                continue


def file_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


@dataclass
class Decoded:
    """An image read from disk, with what the index records about the file."""

    image: Image.Image
    width: int  # full size, before any reduced decode
    height: int
    hash: str


def decode(path: Path, min_side: int = 0) -> Decoded:
    """Read, hash and decode an image, upright (EXIF orientation applied).

    With ``min_side`` JPEGs are decoded at reduced scale (draft mode) while the
    short side stays at or above it: a 12 MP photo then costs a fraction of a
    full decode. Decompression bombs, truncated and non-image files raise
    ``BadImage`` with a one-line reason.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF says: turn 90 degrees
                width, height = height, width
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode != "RGB":
                image = _to_rgb(image)
    except Image.DecompressionBombError:
        raise BadImage("too many pixels (decompression bomb)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt image: {exc}") from None
    if image.width < 1 or image.height < 1:
        raise BadImage("empty image")
    return Decoded(image, width, height, file_hash(data))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white: a transparent logo should not look black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side and centre-crop here; scale and normalise on the model's device.

    The first half runs in decode workers (threads or processes) and returns uint8, a quarter
    of the bytes of float32 to pass between processes and to copy to a GPU; ``normalize``
    does the rest in one batched tensor operation where the model runs.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(crop, crop, 3) uint8 RGB."""
        image = image.convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        if size != (w, h):
            image = image.resize(size, self.resample, reducing_gap=None)
        w, h = image.size
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        return np.array(image.crop((left, top, left + self.crop, top + self.crop)))  # writable

    def normalize(
        self,
        pixels: np.ndarray | torch.Tensor,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """uint8 (B, H, W, 3) or (H, W, 3) -> normalised float (B, 3, H, W) on ``device``.

        A floating-point (B, 3, H, W) batch is taken as normalised already (as an image
        processor from transformers makes it) and only moved.
        """
        import torch

        batch = torch.as_tensor(pixels)
        if batch.is_floating_point():
            return batch.to(device, dtype or batch.dtype, non_blocking=True)
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        batch = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device)
        batch = (batch / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        if dtype is not None:
            batch = batch.to(dtype)
        # The permuted uint8 layout is already channels-last; CPU convolutions here run
        # faster on the usual contiguous layout.
        return batch if channels_last else batch.contiguous()


@dataclass
class Pixels:
    """One file made ready for the model by a decode worker: what travels back to the indexer."""

    array: np.ndarray | None  # (crop, crop, 3) uint8, None when the file is unusable
    width: int = 0
    height: int = 0
    hash: str = ""
    error: str = ""


def load_pixels(path: Path, preprocess: Preprocess) -> Pixels:
    """Decode at reduced size and crop. Never raises: one bad file must never stop a run."""
    try:
        decoded = decode(path, preprocess.resize)
        return Pixels(preprocess(decoded.image), decoded.width, decoded.height, decoded.hash)
    except BadImage as exc:
        return Pixels(None, error=str(exc))
    except Exception as exc:  # noqa: BLE001
        return Pixels(None, error=f"cannot decode: {exc}")


def relative_path(root: Path, path: Path, must_exist: bool = True) -> str | None:
    """``path`` relative to ``root`` in POSIX form ('' for the root itself), or None when it
    lies outside (or, with ``must_exist``, does not exist)."""
    if must_exist and not path.exists():
        return None
    try:
        relative = path.expanduser().resolve().relative_to(root)
    except ValueError:
        return None
    return "" if relative == Path(".") else relative.as_posix()


def free_path(path: Path) -> Path:
    """``path``, or ``name-1.ext``, ``name-2.ext``... when it is taken: never overwrite."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate
