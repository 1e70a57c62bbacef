"""Accelerator figures the cost model and the utilisation metric are judged against.

Dense (no sparsity) tensor-core peaks from the vendors' datasheets; memory is what
``torch.cuda.mem_get_info`` reports as total on the 80/96/141/180 GB parts, not the marketing GB.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    name: str
    bf16_tflops: float
    """Dense bf16 tensor-core peak."""
    memory_gib: float


ACCELERATORS: dict[str, Accelerator] = {
    "h100": Accelerator("NVIDIA H100 SXM 80GB", 989.0, 79.1),
    "h100pcie": Accelerator("NVIDIA H100 PCIe 80GB", 756.0, 79.1),
    "h200": Accelerator("NVIDIA H200 SXM 141GB", 989.0, 139.8),
    "h20": Accelerator("NVIDIA H20 96GB", 148.0, 94.9),
    "b200": Accelerator("NVIDIA B200 180GB", 2250.0, 178.4),
    "a100": Accelerator("NVIDIA A100 SXM 80GB", 312.0, 79.1),
    "l40s": Accelerator("NVIDIA L40S 48GB", 362.0, 44.4),
}


def accelerator_for_device_name(device_name: str) -> Accelerator | None:
    """The table entry whose key appears in a CUDA device name ("NVIDIA H100 80GB HBM3" -> h100)."""
    squashed = device_name.lower().replace(" ", "")  # "H100 PCIe" -> "h100pcie"
    # Longest keys first, so "h200" is not taken for "h20".
    for key in sorted(ACCELERATORS, key=len, reverse=True):
        if key in squashed:
            return ACCELERATORS[key]
    return None


def device_peak_flops(device, dtype) -> tuple[float | None, str]:
    """(peak FLOP/s, where the figure comes from) for a torch device and compute dtype.

    CUDA: the datasheet figure of a known GPU (bf16/fp16 dense; TF32, half of it, for fp32).
    CPU: measured here, the best of a few 1024x1024 fp32 matrix multiplies (about 50 ms), since
    no table knows the machine. None when the GPU is not in the table.
    """
    import torch

    if device.type == "cuda":
        known = accelerator_for_device_name(torch.cuda.get_device_name(device))
        if known is None:
            return None, f"unknown GPU {torch.cuda.get_device_name(device)!r}"
        scale = 0.5 if dtype == torch.float32 else 1.0
        return known.bf16_tflops * 1e12 * scale, f"{known.name} datasheet"
    if device.type == "cpu":
        return _measured_cpu_gemm_flops(), "measured fp32 GEMM"
    return None, f"no peak figure for {device.type}"


def _measured_cpu_gemm_flops(size: int = 1024, repeats: int = 5) -> float:
    import time

    import torch

    a = torch.randn(size, size)
    a @ a  # first-touch costs (oneDNN primitive creation) are not peak
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best
