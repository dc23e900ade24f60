"""imgsearch: find similar images through the captions a vision-language model picks for them.

Names load on first use (PEP 562), so a decode worker that imports ``imgsearch.files``
does not pay for FAISS, SQLAlchemy and the rest.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgsearch.api import Index, default_db, find_db
    from imgsearch.errors import ImgsearchError
    from imgsearch.results import Caption, Hit, IndexSummary, Skipped, Status, Text

_HOMES = {
    "Caption": "imgsearch.results",
    "Hit": "imgsearch.results",
    "ImgsearchError": "imgsearch.errors",
    "Index": "imgsearch.api",
    "IndexSummary": "imgsearch.results",
    "Skipped": "imgsearch.results",
    "Status": "imgsearch.results",
    "Text": "imgsearch.results",
    "default_db": "imgsearch.api",
    "find_db": "imgsearch.api",
}
__all__ = [
    "Caption",
    "Hit",
    "ImgsearchError",
    "Index",
    "IndexSummary",
    "Skipped",
    "Status",
    "Text",
    "default_db",
    "find_db",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'imgsearch' has no attribute {name!r}")
    return getattr(import_module(home), name)
