"""Server start-up and housekeeping: load and warm up the engine, open the jobs, resume them,
expire old videos."""

from __future__ import annotations

import asyncio
import logging
import time

from ...jobs.manager import JobManager
from ...jobs.storage import JobFiles
from ...jobs.store import open_job_store
from ...model_executor.step_io import FRAMES_PER_CHUNK
from ...sampling_params import VideoSamplingParams

logger = logging.getLogger(__name__)
CLEANUP_INTERVAL_S = 60.0


async def load_engine(state) -> None:
    """Load the model in a thread (the server answers /health meanwhile), warm it up, resume jobs."""
    from ...engine.async_engine import AsyncHeliosEngine

    config = state.config
    model = config.model.model
    try:
        engine = await asyncio.to_thread(AsyncHeliosEngine, model_config=config.model, engine_config=config.engine)
        engine.core.step_listeners.append(state.metrics.on_step)
        state.metrics.set_attention_backend(engine.core.executor.attention_backend)
        state.engine = engine
        state.warmup_seconds = await warm_up(engine)
        logger.info("warmed up in %.2f s", state.warmup_seconds)
        await measure_device_peak(engine, state.metrics)
        files = JobFiles(config.server.data_dir)
        store = await asyncio.to_thread(open_job_store, config.server.job_store or files.database)
        jobs = JobManager(engine, files, store, config.served_model_names[0],
                          config.server.retention_hours * 3600, state.metrics, owner=state.replica_id,
                          min_free_bytes=int(config.server.min_free_disk_mb * 2**20),
                          max_stream_seconds=config.server.max_stream_seconds,
                          max_kept_stream_bytes=int(config.server.max_kept_stream_mb * 2**20))
        # A replica of a Ray deployment leaves interrupted jobs to the router (see replica.py).
        resumed = await jobs.resume_interrupted() if state.replica_id is None else []
        state.jobs = jobs
        logger.info("ready at %s: %s (%d interrupted job(s) resumed)", config.server.url, model, len(resumed))
    except Exception as exc:  # noqa: BLE001 - reported by /health, /ready and the log
        logger.exception("loading %s failed", model)
        state.load_error = f"loading {model} failed: {exc}"
        if state.stop_serving is not None:
            state.stop_serving()


async def warm_up(engine) -> float:
    """One chunk at the model's default size and recipe (384x640 for the released models), so
    the first user request does not pay kernel compilation, autotuning, cuBLAS/cuDNN heuristics
    or allocator growth at the serving geometry. Returns its seconds."""
    started = time.perf_counter()
    params = VideoSamplingParams(num_frames=FRAMES_PER_CHUNK)
    async for _ in engine.generate("warm-up", params):
        pass
    return time.perf_counter() - started


async def measure_device_peak(engine, metrics) -> None:
    """The peak the utilisation metric divides by (a datasheet figure, or measured on CPU)."""
    peak, source = await asyncio.to_thread(engine.core.executor.peak_flops)
    metrics.set_device_peak(peak)
    if peak:
        logger.info("device peak %.3g TFLOP/s (%s)", peak / 1e12, source)
    else:
        logger.info("no device peak (%s): helios:model_flops_utilization is not exported", source)


async def periodic_cleanup(state) -> None:
    while True:
        await asyncio.sleep(CLEANUP_INTERVAL_S)
        if state.jobs is not None:
            removed = await state.jobs.delete_expired()
            if removed:
                logger.info("removed %d expired video(s)", removed)
