"""The saved-file format of a search index: a header, the ids, the FAISS index, a checksum.

    IMGSVIX1 | header length (u32) | JSON header | ids (int64) | FAISS index | crc32 | IXND

Everything is checksummed before FAISS reads a byte of it: FAISS trusts the sizes it reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from imgsearch.search.common import IndexFileError, _list_of_rows
from imgsearch.search.compressed import _drop_vector_files, _VectorFile

if TYPE_CHECKING:
    from imgsearch.search.index import VectorIndex

_MAGIC = b"IMGSVIX1"
_END = b"IXND"
_FORMAT = 1
_HEADER_MAX = 1 << 20
_CHUNK = 1 << 24


def save(vix: VectorIndex, path: str | os.PathLike) -> None:
    """Write the index (with ids and stamp) atomically: readers see the old file or the new."""
    path = Path(path)
    if not isinstance(vix.stamp, str):
        raise TypeError(f"stamp must be a str, not {type(vix.stamp).__name__}")
    fields = {
        "format": _FORMAT,
        "kind": vix.kind,
        "dim": vix.dim,
        "count": len(vix.ids),
        "nlist": vix.nlist,
        "nprobe": vix.nprobe,
        "exact_max": vix.exact_max,
        "stamp": vix.stamp,
    }
    if vix._file is not None:  # the vectors file goes first: the header names it
        fields.update(depth=vix.depth, rows=vix._file.place_beside(path))
    header = json.dumps(fields).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private; keep the mode of the file being replaced.
        with contextlib.suppress(OSError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            crc = 0

            def write(data: bytes) -> int:
                nonlocal crc
                crc = zlib.crc32(data, crc)
                return f.write(data)

            write(_MAGIC + struct.pack("<I", len(header)) + header)
            write(vix.ids.astype("<i8").tobytes())
            faiss.write_index(vix.index, faiss.PyCallbackIOWriter(write))
            f.write(struct.pack("<I", crc) + _END)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where possible
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    _drop_vector_files(path, keep=vix._file.path.name if vix._file is not None else None)


def load(cls: type[VectorIndex], path: str | os.PathLike) -> VectorIndex:
    """Read a saved index; IndexFileError if it is damaged (FileNotFoundError if absent)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(len(_MAGIC) + 4)
        if len(head) < len(_MAGIC) + 4 or head[: len(_MAGIC)] != _MAGIC:
            raise IndexFileError(f"{path} is not a saved vector index")
        (header_len,) = struct.unpack("<I", head[len(_MAGIC) :])
        if header_len > min(_HEADER_MAX, size):
            raise IndexFileError(f"{path} is damaged: bad header length")
        meta = _parse_header(f.read(header_len), path)
        start = len(head) + header_len
        body = size - start - 8 * meta["count"] - 8
        if body <= 0:
            raise IndexFileError(f"{path} is truncated")
        # Checksum everything first: FAISS trusts the sizes it reads, so damaged bytes
        # could make it allocate wildly or crash rather than fail cleanly.
        f.seek(0)
        crc, left = 0, size - 8
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise IndexFileError(f"{path} is truncated")
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
        trailer = f.read(8)
        if trailer[4:] != _END or struct.unpack("<I", trailer[:4])[0] != crc:
            raise IndexFileError(f"{path} is damaged or truncated (checksum mismatch)")
        f.seek(start)
        ids = np.frombuffer(f.read(8 * meta["count"]), dtype="<i8").astype(np.int64)
        left = body

        def read(want: int) -> bytes:
            nonlocal left
            data = f.read(min(want, left))
            left -= len(data)
            return data

        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(read))
        except RuntimeError as exc:
            raise IndexFileError(f"{path} holds no readable FAISS index: {exc}") from None
        if left:
            raise IndexFileError(f"{path} is damaged: {left} bytes after the index")
    expected = {
        "ivf": faiss.IndexIVFFlat,
        "compressed": faiss.IndexIVFPQ,
        "exact": faiss.IndexFlatIP,
    }[meta["kind"]]
    if (
        not isinstance(index, expected)
        or index.ntotal != meta["count"]
        or index.metric_type != faiss.METRIC_INNER_PRODUCT
        or (meta["count"] and index.d != meta["dim"])
        or (meta["kind"] != "exact" and index.nlist != meta["nlist"])
    ):
        raise IndexFileError(f"{path} does not match its own header")
    loaded = cls.__new__(cls)
    loaded._reset(meta["dim"], meta["exact_max"], meta["stamp"])
    try:
        loaded._set_ids(ids)
    except ValueError as exc:
        raise IndexFileError(f"{path} is damaged: {exc}") from None
    loaded.kind = meta["kind"]
    loaded.nlist = meta["nlist"]
    loaded.nprobe = meta["nprobe"]
    loaded.index = index
    if loaded.kind != "exact":
        loaded._lists = _list_of_rows(index, path)
    if loaded.kind == "compressed":
        loaded.depth, loaded.code_bytes = meta["depth"], index.pq.M
        loaded._file = _VectorFile.open(
            Path(path).with_name(meta["rows"]), meta["count"], meta["dim"]
        )
    return loaded


def _parse_header(raw: bytes, path: str | os.PathLike) -> dict:
    """The saved header, checked field by field so a bad file fails here and not later."""
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IndexFileError(f"{path} is damaged: unreadable header") from None
    fields = {
        "format": int,
        "kind": str,
        "dim": int,
        "count": int,
        "nlist": int,
        "nprobe": int,
        "exact_max": int,
        "stamp": str,
    }
    if not isinstance(meta, dict) or any(
        not isinstance(meta.get(name), kind) for name, kind in fields.items()
    ):
        raise IndexFileError(f"{path} is damaged: incomplete header")
    if meta["format"] != _FORMAT:
        raise IndexFileError(f"{path} has format {meta['format']}, this version reads {_FORMAT}")
    if meta["kind"] not in ("exact", "ivf", "compressed") or min(meta["dim"], meta["count"]) < 0:
        raise IndexFileError(f"{path} is damaged: bad header values")
    if meta["kind"] == "compressed" and not (
        isinstance(meta.get("depth"), int)
        and isinstance(meta.get("rows"), str)
        and meta["rows"].startswith(f"{Path(path).name}.")  # beside the index, nowhere else
        and "/" not in meta["rows"]
        and os.sep not in meta["rows"]
    ):
        raise IndexFileError(f"{path} is damaged: bad header values")
    return meta
