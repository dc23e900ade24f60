"""The Hugging Face hub, asked only when a model is not on this machine."""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse


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
