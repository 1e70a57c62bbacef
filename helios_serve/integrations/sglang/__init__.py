"""SGLang Diffusion plugin: ``sglang serve --model-path <helios checkpoint>`` runs our executor.

``register`` is the ``sglang.multimodal_gen.plugins`` entry point (see setup.py); setting
``SGLANG_EXTERNAL_MODEL_PACKAGE=helios_serve.integrations.sglang.external`` does the same
without relying on entry points. SGLang is imported only when SGLang calls us.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Replace SGLang's built-in Helios pipelines with ours; safe to call more than once."""
    global _registered
    if _registered:
        return
    from sglang.multimodal_gen.registry import register_pipeline

    from ...model_executor.checkpoint import MODEL_ALIASES
    from .pipeline import (
        SAMPLING_PARAMS,
        VARIANTS,
        HeliosServeConfig,
        HeliosServePipeline,
        HeliosServePyramidPipeline,
        checkpoint_variant,
    )

    for name in VARIANTS:
        pipeline = HeliosServePipeline if name == "base" else HeliosServePyramidPipeline
        register_pipeline(
            pipeline,
            sampling_param_cls=SAMPLING_PARAMS[name],
            pipeline_config_cls=HeliosServeConfig,
            hf_model_paths=[MODEL_ALIASES[f"helios-{name}"]],
            # Chosen by what the checkpoint is, not by its folder name.
            model_detectors=[lambda probe, name=name: checkpoint_variant(probe) == name],
            overwrite=True,
        )
    _registered = True
