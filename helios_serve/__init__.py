"""helios-serve: a serving backend for the Helios autoregressive video diffusion models.

The public names are imported lazily, so ``helios-serve --help`` does not load torch.
"""

__version__ = "0.1.0"

__all__ = ["HeliosEngine", "VideoSamplingParams", "VideoOutput", "VideoChunkOutput"]


def __getattr__(name: str):
    if name == "HeliosEngine":
        from .engine.engine import HeliosEngine

        return HeliosEngine
    if name == "VideoSamplingParams":
        from .sampling_params import VideoSamplingParams

        return VideoSamplingParams
    if name in ("VideoOutput", "VideoChunkOutput"):
        from . import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'helios_serve' has no attribute {name!r}")
