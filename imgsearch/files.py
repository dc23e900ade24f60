"""Files on disk: which ones are images, and decoding them cheaply and safely."""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import stat
import time
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


def shown(name: str) -> str:
    """A file name as it can be printed, stored and put in JSON: bytes that are not valid
    UTF-8 (kept by Python as surrogates) are written as escapes, e.g. ``x\\xff.jpg``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def valid_name(name: str) -> bool:
    """Whether ``name`` is valid UTF-8, as JSON output and PostgreSQL need."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def special_kind(mode: int) -> str:
    """What a file that is neither a regular file nor a folder is, in a word or two."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISDIR(mode):
        return "folder"
    return "special file"


# Reasons the walk gives for an entry it passes over (the summary counts them by these).
SYMLINK = "symbolic link (not followed)"
UNREADABLE_FOLDER = "unreadable folder"
BAD_NAME = "name is not valid UTF-8: rename it to index it"


def walk(
    root: Path,
    skipped: list[tuple[str, str]] | None = None,
    unreadable: list[str] | None = None,
) -> Iterator[FileInfo]:
    """Image files below ``root``: hidden entries skipped, symbolic links never followed.

    ``os.scandir`` gives the stat results the incremental check needs without
    a second system call per file, which keeps a no-change re-run about as
    fast as listing the folder.

    What the walk passes over that would otherwise count is added to ``skipped`` as
    (path, reason): symbolic links with image names or to folders, FIFOs and other special
    files with image names, names that are not valid UTF-8 (shown escaped), and folders it
    cannot read; those folders' paths ('' for the root) also go to ``unreadable``, so that
    what is indexed below them is kept rather than taken for deleted.
    """
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if unreadable is not None:
                unreadable.append(prefix.rstrip("/"))
            if skipped is not None:
                why = exc.strerror or type(exc).__name__
                where = prefix.rstrip("/") or "."
                skipped.append((where, f"{UNREADABLE_FOLDER} ({why}): its indexed images are kept"))
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if not valid_name(name):
                    if skipped is not None and (is_image_name(name) or entry.is_dir()):
                        skipped.append((prefix + shown(name), BAD_NAME))
                    continue
                if entry.is_symlink():
                    if skipped is not None and (is_image_name(name) or _points_to_folder(entry)):
                        skipped.append((prefix + name, SYMLINK))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), f"{prefix}{name}/"))
                elif is_image_name(name):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        yield FileInfo(prefix + name, st.st_size, st.st_mtime_ns)
                    elif skipped is not None:
                        reason = f"not a regular file ({special_kind(st.st_mode)})"
                        skipped.append((prefix + name, reason))
            except OSError:
                continue


def _points_to_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a loop, or no permission
        return False


def file_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: Path) -> str:
    """The content hash of a regular file; OSError for anything else (a FIFO, a device)."""
    fd = open_regular(path, follow_symlinks=False)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


# Reasons that start so are a limit's (the summary counts them apart; a changed limit
# retries them).
OVER_LIMIT = "over the limit"


@dataclass(frozen=True)
class Limits:
    """What one file may cost, checked before it is decoded: its size on disk, and from the
    image's header its decoded pixels (after a JPEG's reduced decode) and aspect ratio.

    A 20000x1 PNG of 142 bytes would otherwise be resized to 5,120,000x256 on the way to the
    model (gigabytes), and a 144-megapixel PNG of zeros is 140 KB on disk."""

    max_pixels: int = 100_000_000
    max_aspect: float = 50.0
    max_file_size: int = 1 << 30

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> Limits:
        """The limits an index records (``imgsearch index --max-pixels ...``), else these."""
        default = cls()
        return cls(
            int(meta.get("max_pixels", default.max_pixels)),
            float(meta.get("max_aspect", default.max_aspect)),
            int(meta.get("max_file_size", default.max_file_size)),
        )

    def check_aspect(self, width: int, height: int) -> None:
        """Raise ``BadImage`` where the image is far longer than wide (or the reverse)."""
        if width < 1 or height < 1:
            raise BadImage("empty image")
        if max(width, height) > self.max_aspect * min(width, height):
            raise BadImage(
                f"{OVER_LIMIT}: {width}x{height} pixels, an aspect ratio of "
                f"{max(width, height) / min(width, height):.0f}:1 (the limit is "
                f"{self.max_aspect:g}:1, --max-aspect)"
            )

    def check_pixels(self, width: int, height: int) -> None:
        """Raise ``BadImage`` where decoding ``width`` x ``height`` pixels is too much."""
        if width * height > self.max_pixels:
            raise BadImage(
                f"{OVER_LIMIT}: {width}x{height} is {width * height / 1e6:.0f} megapixels "
                f"(the limit is {self.max_pixels / 1e6:g}, --max-pixels)"
            )


DEFAULT_LIMITS = Limits()


class NotRegular(OSError):
    """Not a regular file (a FIFO, a device, a folder), or a symbolic link not followed."""

    def __str__(self) -> str:
        return self.strerror or "not a regular file"


def open_regular(path: Path, follow_symlinks: bool = True) -> int:
    """A file descriptor open for reading ``path``, only if it is a regular file.

    Opened without blocking, so that a FIFO (or a device) never hangs the open, then
    checked with fstat on the very file opened: a file replaced between a walk and the
    read is judged as it is now. Raises ``NotRegular`` for anything else, OSError where
    it cannot be opened."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks and os.path.islink(path):
            raise NotRegular(errno.ELOOP, SYMLINK) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(errno.EINVAL, f"not a regular file ({special_kind(mode)})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(
    path: Path, limit: int = DEFAULT_LIMITS.max_file_size, follow_symlinks: bool = True
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``BadImage`` otherwise, with
    the reason: a FIFO or /dev/zero (also behind a symbolic link) is never read."""
    try:
        fd = open_regular(path, follow_symlinks)
    except NotRegular as exc:
        raise BadImage(str(exc)) from None
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise BadImage(_too_big(size, limit))
        # One read of the whole file (plus a byte, to see one that grew): no copies.
        parts = [os.read(fd, size + 1)]
        total = len(parts[0])
        while total > size and total <= limit:  # it grew since the fstat: read on, bounded
            chunk = os.read(fd, min(limit + 1 - total, 1 << 24))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        if total > limit:
            raise BadImage(_too_big(total, limit))
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_big(size: int, limit: int) -> str:
    return f"{OVER_LIMIT}: a file of {_bytes(size)} (the limit is {_bytes(limit)}, --max-file-size)"


def _bytes(count: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"


# EXIF tags (TIFF/EXIF 2.3 numbers) that the photo facts read.
_MAKE, _MODEL, _ORIENTATION, _TAKEN = 0x010F, 0x0110, 0x0112, 0x9003
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
# The IJG (libjpeg) luminance table at quality 50: other qualities scale it.
_IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "TIFF", "GIF", "PPM"})
# The eight orientations a copy may have, as PIL transposes (None: as it is).
ORIENTATIONS = (
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


@dataclass
class PhotoFacts:
    """What a photo's file says about it beyond its pixels, and its orientation hashes.

    ``taken`` is EXIF DateTimeOriginal as the camera wrote it (local time, ISO form), or
    None; ``quality`` the JPEG quality estimated from its quantisation tables (None for
    other formats); ``hashes`` the 64-bit perceptual hashes of the upright photo in each of
    the eight ``ORIENTATIONS``, as 64 bytes: what finds a mirrored or turned copy.
    """

    format: str
    taken: str | None = None
    orientation: int | None = None
    make: str | None = None
    model: str | None = None
    gps: tuple[float, float] | None = None
    quality: int | None = None
    hashes: bytes = b""

    @property
    def lossless(self) -> bool:
        return self.format in LOSSLESS_FORMATS

    @property
    def has_exif(self) -> bool:
        return any(v is not None for v in (self.taken, self.make, self.model, self.gps))

    @property
    def camera(self) -> str | None:
        parts = [p for p in (self.make, self.model) if p]
        return " ".join(parts) if parts else None

    def to_json(self) -> str:
        """One line of JSON (the hashes in hex): how facts cross a Ray batch."""
        values = {**self.__dict__, "hashes": self.hashes.hex()}
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> PhotoFacts:
        values = json.loads(text)
        values["hashes"] = bytes.fromhex(values["hashes"])
        values["gps"] = tuple(values["gps"]) if values["gps"] is not None else None
        return cls(**values)


@functools.cache
def _ijg_sums() -> tuple[int, ...]:
    """The sum of the IJG luminance table at each quality 1-100 (index 0 is quality 1)."""
    sums = []
    for quality in range(1, 101):
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        sums.append(sum(min(255, max(1, int((q * scale + 50) // 100))) for q in _IJG_LUMINANCE))
    return tuple(sums)


def jpeg_quality(tables: dict[int, list[int]] | None) -> int | None:
    """The IJG quality (1-100) whose luminance table is nearest the file's first table:
    a recompressed copy has a lower one than the photo it came from."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    have = sum(tables[0])
    gaps = [abs(total - have) for total in _ijg_sums()]
    return gaps.index(min(gaps)) + 1


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _taken(value: object) -> str | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' as 'YYYY-MM-DDTHH:MM:SS'; None when it is not a date."""
    text = _text(value)
    if text is None or len(text) < 19:
        return None
    date, _, clock = text[:19].partition(" ")
    parts = date.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or parts[0] == "0000":
        return None
    return f"{parts[0]}-{parts[1]}-{parts[2]}T{clock}"


def _degrees(value: object, ref: object) -> float | None:
    try:
        d, m, s = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    sign = -1.0 if _text(ref) in ("S", "W") else 1.0
    return sign * (d + m / 60 + s / 3600)


def orientation_hashes(image: Image.Image) -> bytes:
    """The perceptual hash (pHash: the DCT of the 32 x 32 gray photo, its 8 x 8 lowest
    frequencies against their median) of the photo in each of the eight orientations, 8
    bytes each. All eight from one resize and one batched DCT: a photo costs well under a
    millisecond (imagehash's phash, which this equals bit for bit, is called once per
    orientation and costs several)."""
    from scipy.fft import dct

    small = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    turned = np.stack([_turn(small, turn) for turn in ORIENTATIONS])
    low = dct(dct(turned, axis=1), axis=2)[:, :8, :8].reshape(8, 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).tobytes()


def _turn(pixels: np.ndarray, turn: Image.Transpose | None) -> np.ndarray:
    """``pixels`` as PIL's transpose ``turn`` would leave them."""
    if turn is None:
        return pixels
    return {
        Image.Transpose.FLIP_LEFT_RIGHT: lambda p: p[:, ::-1],
        Image.Transpose.FLIP_TOP_BOTTOM: lambda p: p[::-1],
        Image.Transpose.ROTATE_90: lambda p: np.rot90(p, 1),
        Image.Transpose.ROTATE_180: lambda p: np.rot90(p, 2),
        Image.Transpose.ROTATE_270: lambda p: np.rot90(p, 3),
        Image.Transpose.TRANSPOSE: lambda p: p.T,
        Image.Transpose.TRANSVERSE: lambda p: np.rot90(p, 2).T,
    }[turn](pixels)


def photo_facts(opened: Image.Image, upright: Image.Image | None) -> PhotoFacts:
    """The facts of a photo ``opened`` by PIL (its header and EXIF) and decoded ``upright``
    (None: no hashes yet; the GPU path makes them from its own decoded image)."""
    exif = opened.getexif()
    taken = gps = None
    try:
        taken = _taken(exif.get_ifd(_EXIF_IFD).get(_TAKEN))
        where = exif.get_ifd(_GPS_IFD)
        if where:
            lat, lon = _degrees(where.get(2), where.get(1)), _degrees(where.get(4), where.get(3))
            if lat is not None and lon is not None and abs(lat) <= 90 and abs(lon) <= 180:
                gps = (round(lat, 7), round(lon, 7))
    except Exception:  # noqa: BLE001 - a damaged EXIF block says nothing, it stops nothing
        pass
    orientation = exif.get(_ORIENTATION)
    jpeg = opened.format == "JPEG"
    return PhotoFacts(
        format=opened.format or "",
        taken=taken,
        orientation=orientation if isinstance(orientation, int) else None,
        make=_text(exif.get(_MAKE)),
        model=_text(exif.get(_MODEL)),
        gps=gps,
        quality=jpeg_quality(getattr(opened, "quantization", None) if jpeg else None),
        hashes=b"" if upright is None else orientation_hashes(upright),
    )


@dataclass
class Decoded:
    """An image read from disk, with what the index records about the file."""

    image: Image.Image
    width: int  # full size, before any reduced decode
    height: int
    hash: str
    facts: PhotoFacts | None = None


def decode(
    path: Path,
    min_side: int = 0,
    limits: Limits = DEFAULT_LIMITS,
    follow_symlinks: bool = True,
    with_facts: bool = False,
) -> Decoded:
    """Read, hash and decode an image, upright (EXIF orientation applied).

    With ``min_side`` JPEGs are decoded at reduced scale (draft mode) while the
    short side stays at or above it: a 12 MP photo then costs a fraction of a
    full decode. Decompression bombs, files over ``limits`` (checked from the file's size
    and the image's header, before decoding), FIFOs and devices, truncated and non-image
    files raise ``BadImage`` with a one-line reason. ``follow_symlinks=False``: a path that
    is a symbolic link is not read (the indexer's, whose walk never follows them).
    ``with_facts``: read the photo's ``PhotoFacts`` too (what the index stores of it).
    """
    data = read_file(path, limits.max_file_size, follow_symlinks)
    return decode_bytes(data, min_side, limits, with_facts)


def decode_bytes(
    data: bytes,
    min_side: int = 0,
    limits: Limits = DEFAULT_LIMITS,
    with_facts: bool = False,
    digest: str | None = None,
) -> Decoded:
    """``decode`` of a file's bytes already read (``digest``: their hash, if already made)."""
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            limits.check_aspect(width, height)
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF says: turn 90 degrees
                width, height = height, width
            stored = image.size
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            limits.check_pixels(*image.size)  # as decoded: after a JPEG's reduction
            opened = image
            fast = _opencv_jpeg(data, image, stored)
            if fast is not None:
                image = fast
            else:
                image.load()
                image = ImageOps.exif_transpose(image)
            if image.mode != "RGB":
                image = _to_rgb(image)
            facts = photo_facts(opened, image) if with_facts else None
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(f"{OVER_LIMIT}: too many pixels (decompression bomb)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt image: {exc}") from None
    if image.width < 1 or image.height < 1:
        raise BadImage("empty image")
    return Decoded(image, width, height, digest or file_hash(data), facts)


# EXIF orientations as the PIL transposes that turn a photo upright (ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# OpenCV's decode flags for a JPEG decoded at 1/1, 1/2, 1/4 and 1/8 of its size.
_REDUCED = {
    1: "IMREAD_COLOR",
    2: "IMREAD_REDUCED_COLOR_2",
    4: "IMREAD_REDUCED_COLOR_4",
    8: "IMREAD_REDUCED_COLOR_8",
}


def ends_as_jpeg(data: bytes) -> bool:
    """Whether a JPEG's bytes end with its end marker (trailing zeros allowed): libjpeg-based
    decoders other than Pillow's (OpenCV, nvJPEG) fill in a truncated file where Pillow says
    it is truncated, so only such files may go to them."""
    return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def _opencv_jpeg(data: bytes, image: Image.Image, stored: tuple[int, int]) -> Image.Image | None:
    """An RGB or grey JPEG opened by PIL (draft set, not loaded; ``stored``: its size before
    the draft) decoded by OpenCV at the same reduced size and turned upright: the same
    pixels as Pillow's draft decode, 13-16% sooner on the 2-core machine (one thread,
    benchmarks/decode_speed.py) and 37% on a 16-core one (issue 17). None where Pillow must
    decode it: another format or mode, or a file that does not end as a JPEG does (OpenCV
    fills in a truncated file where Pillow says it is truncated)."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    if not ends_as_jpeg(data):
        return None
    scale = next((k for k in _REDUCED if _reduced(stored, k) == image.size), None)
    if scale is None:
        return None
    try:
        import cv2
    except ImportError:  # a dependency, but a machine without it still decodes, by Pillow
        return None
    flags = getattr(cv2, _REDUCED[scale]) | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None or bgr.shape[1::-1] != image.size:
        return None
    upright = Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))
    turn = _UPRIGHT.get(image.getexif().get(_ORIENTATION, 1))
    return upright if turn is None else upright.transpose(turn)


def _reduced(size: tuple[int, int], scale: int) -> tuple[int, int]:
    """A JPEG's size decoded at 1/``scale`` (libjpeg rounds up)."""
    return ((size[0] + scale - 1) // scale, (size[1] + scale - 1) // scale)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white: a transparent logo should not look black.

    High bit depths are scaled by their range, not clipped to 0-255 (which makes a 16-bit
    photo solid white): 16 bits by 0-65535, 32-bit integers and floats by the image's own
    minimum and maximum."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        return _scaled(image, 0.0, 65535.0)  # PNG has no 32-bit gray: mode I is 16 bits there
    if image.mode in ("I", "F") or image.mode.startswith(("I;32", "F;")):
        values = np.asarray(image)
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size == 0:
            return Image.new("RGB", image.size)
        return _scaled(image, float(finite.min()), float(finite.max()), values)
    return image.convert("RGB")


def _scaled(
    image: Image.Image, low: float, high: float, values: np.ndarray | None = None
) -> Image.Image:
    """Gray levels from ``low`` to ``high`` as 8-bit RGB, a band of rows at a time (a float
    copy of a large image would cost four times its 8-bit size)."""
    if values is None:
        values = np.asarray(image)
    out = np.zeros(values.shape[:2], np.uint8)
    scale = 255.0 / (high - low) if high > low else 0.0
    for top in range(0, len(out), 1024):
        band = values[top : top + 1024].astype(np.float32)
        band = np.nan_to_num((band - low) * scale, nan=0.0, posinf=255.0, neginf=0.0)
        out[top : top + 1024] = np.clip(band + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L").convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side and centre-crop here; scale and normalise on the model's device.

    The first half runs in decode workers (threads or processes) and returns uint8, a quarter
    of the bytes of float32 to pass between processes and to copy to a GPU; ``normalize``
    does the rest in one batched tensor operation where the model runs. ``stretch``: resize
    the whole image to (crop, crop), aspect ratio not kept and nothing cut off, as SigLIP's
    image processor does.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC
    stretch: bool = False

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(crop, crop, 3) uint8 RGB."""
        image = image.convert("RGB")
        w, h = image.size
        if self.stretch:
            if (w, h) != (self.crop, self.crop):
                image = image.resize((self.crop, self.crop), self.resample, reducing_gap=None)
            return np.array(image)  # writable
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
    facts: PhotoFacts | None = None
    read_s: float = 0.0  # reading and hashing the file: what the benchmark's stages add up
    decode_s: float = 0.0  # decoding, facts and preprocessing


def load_pixels(path: Path, preprocess: Preprocess, limits: Limits = DEFAULT_LIMITS) -> Pixels:
    """Decode at reduced size and crop. Never raises: one bad file must never stop a run.
    A symbolic link (a file swapped for one since the walk) is not read."""
    start = time.perf_counter()
    read = start
    try:
        data = read_file(path, limits.max_file_size, follow_symlinks=False)
        digest = file_hash(data)
        read = time.perf_counter()
        decoded = decode_bytes(data, preprocess.resize, limits, True, digest)
        array = preprocess(decoded.image)
        pixels = Pixels(array, decoded.width, decoded.height, decoded.hash, facts=decoded.facts)
    except BadImage as exc:
        pixels = Pixels(None, error=str(exc))
    except Exception as exc:  # noqa: BLE001
        pixels = Pixels(None, error=f"cannot decode: {exc}")
    pixels.read_s, pixels.decode_s = read - start, time.perf_counter() - read
    return pixels


def load_chunk(
    paths: list[Path], preprocess: Preprocess, limits: Limits = DEFAULT_LIMITS
) -> list[Pixels]:
    """``load_pixels`` for several files in one task: a worker process is handed 16-32
    files at a time, not one (a task each capped a 16-process pool at 2,000-2,400 files/s)."""
    return [load_pixels(path, preprocess, limits) for path in paths]


# The reduced size the facts of an indexed photo are read at when an older index fills them in.
FACTS_SIDE = 256


def load_facts(path: Path, limits: Limits = DEFAULT_LIMITS) -> PhotoFacts | str:
    """A photo's facts alone, or why they cannot be read. Never raises."""
    try:
        facts = decode(path, FACTS_SIDE, limits, follow_symlinks=False, with_facts=True).facts
        assert facts is not None
        return facts
    except BadImage as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001
        return f"cannot decode: {exc}"


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
