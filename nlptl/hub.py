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

def check_push(repo_id: str) -> None:
    """Before a stage trains with --push-to-hub: fail in seconds, not after the training, when the
    upload at the end cannot happen (no network, no token)."""
    if not reachable():
        raise NlptlError(f"--push-to-hub {repo_id}: the Hugging Face Hub is unreachable (offline); run without "
                         f"--push-to-hub and upload the run directory later with: hf upload {repo_id} OUT")
    from huggingface_hub import get_token

    if not get_token():
        from nlptl.errors import UsageError

        raise UsageError(f"--push-to-hub {repo_id} needs a Hugging Face token with write access: set HF_TOKEN or "
                         "run `hf auth login`")


# Never uploaded: resumable checkpoints (a finished run has none) and `nlptl report`'s plots.
PUSH_IGNORE = ["checkpoints/**", "report/**", ".*"]


def push(out: Path, repo_id: str, private: bool, stage: str) -> str:
    """Upload a finished stage directory (weights, tokenizer, model card README.md, nlptl-run.json,
    metrics and tracker logs) to the model repo `repo_id`, created when missing. Returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(out), ignore_patterns=PUSH_IGNORE,
                          commit_message=f"nlptl {stage}: {Path(out).name}")
    except Exception as e:  # noqa: BLE001 - hub errors (auth, permissions, network) become one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NlptlError(f"--push-to-hub {repo_id}: the upload failed ({first}); the run is complete in {out}: "
                         f"fix the cause and upload it with: hf upload {repo_id} {out}") from e
    return str(getattr(url, "url", url))
