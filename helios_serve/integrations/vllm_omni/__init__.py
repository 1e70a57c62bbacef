"""vLLM-Omni plugin: ``vllm serve <helios checkpoint> --omni`` runs our Helios executor.

vLLM-Omni reads ``model_index.json["_class_name"]`` of a diffusers-format checkpoint and looks
the name up in its diffusion registry. We register our pipeline under the two names Helios
checkpoints carry, replacing vLLM-Omni's built-in Helios (its documented way to swap a
pipeline; a new name would be served as an image model).

Both functions are entry points (see setup.py). They run in every vLLM-Omni process, so they
are cheap and idempotent, and they import vLLM-Omni only when vLLM-Omni calls them.
"""

from __future__ import annotations

import logging
import os

HELIOS_ARCHITECTURES = ("HeliosPipeline", "HeliosPyramidPipeline")
CPU_PLATFORM_ENV = "HELIOS_OMNI_CPU"
"""Set to 1 to run vLLM-Omni on CPU with our platform plugin (vLLM-Omni 0.30 has no CPU platform)."""


def register() -> None:
    """``vllm_omni.general_plugins`` entry point."""
    from vllm_omni.diffusion.registry import register_diffusion_model

    # Inside vLLM, our log records go through vLLM's handler and format, as vLLM-Omni's do.
    logging.getLogger("helios_serve").parent = logging.getLogger("vllm")

    for architecture in HELIOS_ARCHITECTURES:
        register_diffusion_model(
            architecture,
            "helios_serve.integrations.vllm_omni.pipeline",
            "HeliosServePipeline",
            pre_process_func_name="get_pre_process_func",
            post_process_func_name="get_post_process_func",
        )


def cpu_platform() -> str | None:
    """``vllm_omni.platform_plugins`` entry point: our CPU platform, only when asked for.

    Returning None leaves vLLM-Omni's own platform detection (CUDA, ROCm, ...) untouched.
    """
    if os.environ.get(CPU_PLATFORM_ENV) != "1":
        return None
    return "helios_serve.integrations.vllm_omni.cpu_platform.CpuOmniPlatform"
