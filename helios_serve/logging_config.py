"""One log format for the whole server: our loggers, the engine's and uvicorn's all write through
the root logger's one handler, so every line reads ``time LEVEL logger: message``.

``serve`` applies ``log_config`` once at start and hands the same dictionary to uvicorn, which
applies it again when it starts (uvicorn's own default would give its loggers their own handlers
and format). The per-request lines (``log_request_done``) are vLLM's request log for videos.
"""

from __future__ import annotations

import logging
import logging.config

from .model_executor.step_io import chunk_frame_counts

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

request_logger = logging.getLogger("helios_serve.requests")
_log_requests = True


def log_config(level: str) -> dict:
    """A ``logging.config.dictConfig`` dictionary: one stderr handler on the root logger, and
    uvicorn's loggers without handlers of their own, so their records reach it. Their level is
    uvicorn's to set (``uvicorn.Config(log_level=...)``), after it applies this."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"helios": {"format": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "helios", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
    }


def configure_logging(level: str, log_requests: bool = True) -> dict:
    """Apply the one format at ``level``; returns the dictionary for uvicorn's ``log_config``."""
    config = log_config(level)
    logging.config.dictConfig(config)
    set_request_logging(log_requests)
    return config


def set_request_logging(enabled: bool) -> None:
    """Whether a line is logged per finished video (off: the disable-log-requests option). A flag
    here, not the logger's ``disabled``: every ``dictConfig`` (uvicorn's included) resets that."""
    global _log_requests
    _log_requests = enabled


def log_request_done(job, seconds: float) -> None:
    """One line per video whose run ended: its id, how it ended (completed, failed with its error
    code, or cancelled: deleted or stopped), the frames it has and the run's seconds from
    submission (a resumed video's from its resumption). ``job`` is its record (jobs/store.py)."""
    if not _log_requests:
        return
    if job.status == "completed":
        status = "completed"
    else:
        status = f"failed ({job.error_code})" if job.status == "failed" else "cancelled"
    frames = sum(chunk_frame_counts(job.num_frames)[:job.chunks_completed])
    request_logger.info("%s %s: %d frames in %.2f s", job.id, status, frames, seconds)
