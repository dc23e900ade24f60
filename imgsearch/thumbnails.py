"""Thumbnails of indexed photos: made on demand, cached in the user cache by content hash.

JPEGs decode in draft mode (at 1/2 to 1/8 scale), so a camera photo costs a fraction of a
full decode; the cache is keyed by the file's content hash and the size, so a moved or
copied photo reuses its thumbnail.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path

from PIL import Image

from imgsearch import config
from imgsearch.files import BadImage, decode
from imgsearch.results import IndexedFile


def make_thumbnail(path: Path, size: int) -> bytes:
    """JPEG bytes of the image at ``path``, longest side at most ``size``. JPEGs decode in
    draft mode (at 1/2 to 1/8 scale), so a camera photo costs a fraction of a full decode.
    Raises ``BadImage``."""
    image = decode(path, min_side=size).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def cached_thumbnail(found: IndexedFile, size: int) -> bytes | None:
    """The thumbnail of an indexed file, kept in the user cache folder under its content hash
    and size (a moved or copied photo reuses it); None when the file no longer decodes."""
    try:
        stat = found.path.stat()
    except OSError:
        return None
    if (stat.st_size, stat.st_mtime_ns) != (found.size, found.mtime_ns):
        # Changed since it was indexed: the stored hash no longer names its content.
        try:
            return make_thumbnail(found.path, size)
        except BadImage:
            return None
    cached = config.cache_dir() / "thumbnails" / found.hash[:2] / f"{found.hash}-{size}.jpg"
    with contextlib.suppress(OSError):
        return cached.read_bytes()
    try:
        data = make_thumbnail(found.path, size)
    except BadImage:
        return None
    with contextlib.suppress(OSError):  # a read-only cache still gives thumbnails
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, cached)
    return data
