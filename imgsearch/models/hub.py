"""The Hugging Face hub: its local cache, read without transformers, and the hub itself,
asked only when a model is not on this machine."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloaded models, by the same environment variables."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def config_file(name: str) -> Path | None:
    """A checkpoint's config.json: in its folder, or in the cache's snapshot of a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path / "config.json"
    if name.count("/") != 1:
        return None
    repo = hub_cache() / f"models--{name.replace('/', '--')}"
    try:
        revision = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    return repo / "snapshots" / revision / "config.json"


def model_type(name: str) -> str | None:
    """The checkpoint's ``model_type`` ("clip", "siglip", "siglip2"...) if it is on this
    machine: a file read, so that telling backends apart costs no import of transformers."""
    path = config_file(name)
    if path is None:
        return None
    try:
        kind = json.loads(path.read_text("utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection test, so an offline machine gives up in seconds, not minutes."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # DNS has no timeout of its own
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
