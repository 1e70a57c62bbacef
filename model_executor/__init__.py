"""Everything that touches model weights and the device (installed as helios_serve.model_executor).

Nothing here imports the serving layer: no requests, queues or HTTP. Names are imported
lazily so that torch-free modules (``step_io``) can be used without loading torch.
"""

_EXPORTS = {
    "HELIOS_14B": ".config",
    "HELIOS_TINY": ".config",
    "TRANSFORMER_PRESETS": ".config",
    "HeliosTransformerConfig": ".config",
    "CheckpointError": ".loader",
    "HeliosTransformer": ".models.helios_transformer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
