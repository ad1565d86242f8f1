"""The Hugging Face Hub, reached only when a name needs it, and failing fast when it cannot be.

`datasets` retries an unreachable hub for ~25 s before it gives up. We probe the endpoint once
(about a second at worst) and, when it is unreachable, switch the libraries to offline mode so that a
name that is in the local cache still loads and one that is not fails at once with our message.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

_reachable: bool | None = None


def offline_requested() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def reachable(timeout: float = 1.5) -> bool:
    """True when the hub endpoint accepts a TCP connection (cached for the process)."""
    global _reachable
    if offline_requested():
        return False
    if _reachable is None:
        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            _reachable = True
        except OSError:
            _reachable = False
    return _reachable


def go_offline() -> None:
    """Put transformers/datasets/huggingface_hub in offline mode (cache only), also when already imported."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as c

        c.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config as dc

        dc.HF_HUB_OFFLINE = True
        if hasattr(dc, "HF_DATASETS_OFFLINE"):
            dc.HF_DATASETS_OFFLINE = True


def prepare(what: str) -> bool:
    """Call before loading `what` from the hub. Returns whether the hub is online; when it is not,
    the libraries are switched to their local cache."""
    online = reachable()
    if not online:
        go_offline()
    return online
