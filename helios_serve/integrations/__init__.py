"""Adapters that let other serving engines run our Helios executor.

Each sub-package imports its engine lazily, only when that engine loads the plugin, so
helios-serve itself never depends on vLLM-Omni or SGLang.
"""
