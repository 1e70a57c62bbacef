"""Server start-up and housekeeping: load and warm up the engine, resume jobs, expire old videos."""

from __future__ import annotations

import asyncio
import logging

from ...jobs.storage import JobFiles
from ...jobs.store import JobStore
from ...sampling_params import VideoSamplingParams
from .serving_video import VideoService

logger = logging.getLogger(__name__)
CLEANUP_INTERVAL_S = 60.0


async def load_engine(state) -> None:
    """Load the model in a thread (the server answers /health meanwhile), warm it up, resume jobs."""
    from ...engine.async_engine import AsyncHeliosEngine

    config = state.config
    try:
        engine = await asyncio.to_thread(
            AsyncHeliosEngine, model=config.model, device=config.device, dtype=config.dtype,
            engine_config=config.engine, kernels=config.kernels,
        )
        engine.core.step_listeners.append(state.metrics.on_step)
        state.engine = engine
        await warm_up(engine)
        await measure_device_peak(engine, state.metrics)
        files = JobFiles(config.data_dir)
        service = VideoService(engine, files, JobStore(files.database), config.model, state.metrics,
                               retention_s=config.retention_hours * 3600, instance=config.instance_id)
        # A replica of a Ray deployment leaves interrupted jobs to the router (see replica.py).
        resumed = service.resume_interrupted() if config.instance_id is None else []
        state.service = service
        logger.info("ready: %s (%d interrupted job(s) resumed)", config.model, len(resumed))
    except Exception as exc:  # noqa: BLE001 - reported by /ready and the log, the process stays up
        logger.exception("loading %s failed", config.model)
        state.load_error = f"loading {config.model} failed: {exc}"


async def warm_up(engine) -> None:
    """One short generation at the smallest size: first-touch costs are paid before users arrive."""
    size = 16 * 2 ** (engine.variant.scheduler.stages - 1)
    params = VideoSamplingParams(num_frames=1, height=size, width=size, pyramid_num_inference_steps_list=None,
                                 num_inference_steps=1)
    async for _ in engine.generate("warm-up", params):
        pass


async def measure_device_peak(engine, metrics) -> None:
    """The peak the utilisation metric divides by (a datasheet figure, or measured on CPU)."""
    from ...hardware import device_peak_flops

    peak, source = await asyncio.to_thread(device_peak_flops, *engine.core.executor.device_and_dtype)
    metrics.set_device_peak(peak)
    if peak:
        logger.info("device peak %.3g TFLOP/s (%s)", peak / 1e12, source)
    else:
        logger.info("no device peak (%s): helios_model_flops_utilization is not exported", source)


async def periodic_cleanup(state) -> None:
    while True:
        await asyncio.sleep(CLEANUP_INTERVAL_S)
        if state.service is not None:
            removed = state.service.delete_expired()
            if removed:
                logger.info("removed %d expired video(s)", removed)
