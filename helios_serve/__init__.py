"""helios-serve: a serving backend for the Helios autoregressive video diffusion models."""

__version__ = "0.1.0"
