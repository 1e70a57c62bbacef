"""Everything that touches model weights and the device (installed as helios_serve.model_executor).

Nothing here imports the serving layer: no requests, queues or HTTP.
"""

from .config import HELIOS_14B, HELIOS_TINY, TRANSFORMER_PRESETS, HeliosTransformerConfig
from .loader import CheckpointError
from .models.helios_transformer import HeliosTransformer

__all__ = [
    "HELIOS_14B",
    "HELIOS_TINY",
    "TRANSFORMER_PRESETS",
    "CheckpointError",
    "HeliosTransformer",
    "HeliosTransformerConfig",
]
