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
    hbm_tb_per_s: float


ACCELERATORS: dict[str, Accelerator] = {
    "h100": Accelerator("NVIDIA H100 SXM 80GB", 989.0, 79.1, 3.35),
    "h100pcie": Accelerator("NVIDIA H100 PCIe 80GB", 756.0, 79.1, 2.0),
    "h200": Accelerator("NVIDIA H200 SXM 141GB", 989.0, 139.8, 4.8),
    "h20": Accelerator("NVIDIA H20 96GB", 148.0, 94.9, 4.0),
    "b200": Accelerator("NVIDIA B200 180GB", 2250.0, 178.4, 8.0),
    "a100": Accelerator("NVIDIA A100 SXM 80GB", 312.0, 79.1, 2.04),
    "l40s": Accelerator("NVIDIA L40S 48GB", 362.0, 44.4, 0.864),
}


def accelerator_for_device_name(device_name: str) -> Accelerator | None:
    """The table entry whose key appears in a CUDA device name ("NVIDIA H100 80GB HBM3" -> h100)."""
    lowered = device_name.lower()
    # Longest keys first, so "h200" is not taken for "h20".
    for key in sorted(ACCELERATORS, key=len, reverse=True):
        if key in lowered.replace(" ", ""):
            return ACCELERATORS[key]
    return None
