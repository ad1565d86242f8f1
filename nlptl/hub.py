"""The Hugging Face Hub, reached only when a name needs it, and failing fast when it cannot be.

`datasets` retries an unreachable hub for ~25 s before it gives up. We probe the endpoint once
(about a second at worst) and, when it is unreachable, switch the libraries to offline mode so that a
name that is in the local cache still loads and one that is not fails at once with our message.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from nlptl.errors import NlptlError

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


def cached(repo: str, kind: str = "model") -> bool:
    """Whether `repo` (kind "model" or "dataset") has a copy in the local Hugging Face caches, found from
    the cache layout alone (no heavy import): the hub cache, and for datasets also datasets' Arrow cache."""
    import huggingface_hub.constants as c

    folder = f"{kind}s--" + repo.replace("/", "--")
    if (Path(c.HF_HUB_CACHE) / folder).is_dir():
        return True
    if kind == "dataset":
        arrow = Path(os.environ.get("HF_DATASETS_CACHE") or Path(c.HF_HOME) / "datasets")
        return (arrow / repo.replace("/", "___")).is_dir()
    return False


def require(repo: str, kind: str, what: str, hint: str) -> None:
    """Fail at once, before any heavy import, when the hub is unreachable and `repo` is not cached
    (instead of the libraries' ~25 s of retries and a traceback)."""
    if not reachable() and not cached(repo, kind):
        raise NlptlError(
            f"{what}: the Hugging Face Hub is unreachable (offline) and '{repo}' is not in the local cache; {hint}"
        )

