"""Triton kernels for the hot elementwise paths (installed as helios_serve.kernels).

Each op lives in its own file with its plain-PyTorch reference. This package imports only
torch, triton and the standard library, and must import on machines without a GPU.
"""
