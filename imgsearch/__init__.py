"""imgsearch: find similar images through the captions a vision-language model picks for them."""

from imgsearch.api import Index, Status, default_db, find_db
from imgsearch.errors import ImgsearchError
from imgsearch.indexer import IndexSummary, Skipped
from imgsearch.search import Caption, Hit

__all__ = [
    "Caption",
    "Hit",
    "ImgsearchError",
    "Index",
    "IndexSummary",
    "Skipped",
    "Status",
    "default_db",
    "find_db",
]
__version__ = "0.1.0"
