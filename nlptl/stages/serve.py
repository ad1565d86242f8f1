"""Serve a classifier over HTTP (FastAPI on uvicorn), with dynamic batching.

    nlptl serve runs/finetune-...                         # http://127.0.0.1:8000
    nlptl serve exported/ --port 9000 --max-batch-size 64 --max-wait-ms 10   # an ONNX export (model.onnx)
    nlptl serve runs/finetune-... --abstain-below 0.8     # "label": null under 80% (calibrated scores)
    nlptl serve exported/ --int8                          # its int8 model (`nlptl export --quantize int8`)
    curl -s localhost:8000/predict -d '{"texts": ["What a lovely film", "Dull and far too long"]}'
    curl -s localhost:8000/health; curl -s localhost:8000/info

The routes and the batching are described in nlptl/server.py. SIGTERM or Ctrl-C: the server stops
accepting, answers the requests it holds for up to --drain-seconds (30), answers those still waiting
with a 503, and exits 0. One log line per batch on stderr (--json: JSON Lines).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import tempfile

from nlptl.config import ServeConfig, to_dict
from nlptl.errors import UsageError

log = logging.getLogger("nlptl")
SERVE_MISSING = "nlptl serve needs fastapi and uvicorn: pip install 'nlptl[serve]'"
# uvicorn's own drain limit is this much longer than --drain-seconds: by then the server has answered
# what was left with a 503 (server.watch_stop_signals); uvicorn's limit only catches what it could not reach.
GRACEFUL_MARGIN = 2.0


def run(cfg: ServeConfig, json_logs: bool = False, quiet: bool = False) -> dict:
    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn")):
        raise UsageError(SERVE_MISSING)
    settings = to_dict(cfg) | {"model": cfg.model, "json_logs": json_logs, "quiet": quiet}
    import uvicorn

    from nlptl import server

    quiet_uvicorn()
    common = {"host": cfg.host, "port": cfg.port, "log_config": None, "access_log": False, "log_level": "warning",
              "timeout_graceful_shutdown": cfg.drain_seconds + GRACEFUL_MARGIN, "server_header": False}
    _check(settings)
    if cfg.workers == 1:
        # Loaded here, before the port opens: a model that does not load is one error line, not a
        # server that never gets ready.
        classifier = server.load(settings)
        _announce(cfg, settings, classifier.info())
        config = uvicorn.Config(server.build_app(settings, classifier), **common)
    else:
        # Each worker loads its own copy; this process only checked the model's files and the flags.
        # Each claims a slot in this directory (its number, for its GPU: worker i on cuda:(i % GPUs)).
        slots = tempfile.mkdtemp(prefix="nlptl-serve-")
        os.environ[server.SETTINGS_ENV] = json.dumps(settings | {"worker_slots": slots})
        _announce(cfg, settings, None)
        config = uvicorn.Config("nlptl.server:app_from_env", factory=True, workers=cfg.workers, **common)
    try:
        _drain_then_exit(config)
    finally:
        if cfg.workers > 1:
            shutil.rmtree(slots, ignore_errors=True)
    log.info("stopped")
    return {"model": settings["model"], "stopped": True}


def _check(settings: dict) -> None:
    """The model and --max-length checked from config.json, before anything heavy loads."""
    from nlptl.inference import check_abstain, onnx_file
    from nlptl.models import inspect_model
    from nlptl.stages.common import check_max_length

    if onnx_file(settings["model"], settings.get("int8", False), "MODEL"):
        return
    ref = inspect_model(settings["model"], "MODEL")
    if not ref.is_classifier:
        raise UsageError(f"MODEL {ref.spec} is not a classifier; serve needs a finetune run or an ONNX export")
    check_max_length(settings["max_length"], ref.config)
    check_abstain(ref.config, settings.get("abstain_below"))


def _announce(cfg: ServeConfig, settings: dict, info: dict | None) -> None:
    what = f" ({info['backend']} on {info['device']}, labels {', '.join(info['labels'])})" if info else ""
    log.info("starting: %s%s on http://%s:%d with %d worker(s); batches of up to %d texts, waiting up to %g ms",
             settings["model"], what, cfg.host, cfg.port, cfg.workers, cfg.max_batch_size, cfg.max_wait_ms,
             extra={"fields": {"event": "start", "host": cfg.host, "port": cfg.port, "workers": cfg.workers,
                               **({k: info[k] for k in ("model", "backend", "device")} if info else {})}})


def _drain_then_exit(config) -> None:
    """Run uvicorn until SIGTERM or SIGINT, which it handles by draining. Afterwards it re-raises the
    signal to the handler it found: a no-op one here, so that the drained server exits 0 (not by the
    signal's default action, or as an interrupted command)."""
    import uvicorn

    def drained(signum, frame) -> None:
        pass

    previous = {s: signal.signal(s, drained) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = uvicorn.Server(config)
        if config.workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            try:
                server.run()
            except SystemExit:  # uvicorn's answer to a port it cannot bind (after logging why)
                pass
            if not server.started:
                from nlptl.errors import NlptlError

                raise NlptlError(f"could not listen on {config.host}:{config.port} (in use, or not an address of "
                                 "this machine); pass another --port or --host")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def quiet_uvicorn() -> None:
    """uvicorn's own warnings and errors go through nlptl's log handler (one format, --json too)."""
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = list(log.handlers)
        logger.propagate = False
        logger.setLevel(logging.WARNING)
