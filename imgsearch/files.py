"""Files on disk: which ones are images, and decoding them cheaply and safely."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

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
