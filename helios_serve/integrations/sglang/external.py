"""Importing this module registers our pipelines (for SGLANG_EXTERNAL_MODEL_PACKAGE)."""

from . import register

register()
