"""Accelerator figures the cost model and the utilisation metric are judged against.

Dense (no sparsity) tensor-core peaks and memory bandwidths from the vendors' datasheets; memory is what
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
    memory_tb_s: float
    """Memory bandwidth, TB/s: the floor of a forward that must stream the weights once."""
    interconnect_gb_s: float
    """Effective GPU-to-GPU rate of an all-to-all, GB/s each GPU sends to the others (sequence
    parallelism). An assumption, not a measurement: see INTERCONNECT_EFFICIENCY."""
    collective_latency_us: float
    """Fixed cost of one collective call (an NCCL all-to-all or all-gather of a few MB), µs. An
    assumption: NCCL's small-message latency within one node is ~10-30 µs; the kernel launch and
    the ranks' skew come on top."""


INTERCONNECT_EFFICIENCY = 370 / 450
"""Share of the per-direction link bandwidth an all-to-all is assumed to reach: gpu-review.md (§3,
lever 8, Ulysses) takes ~370 GB/s on an H100's NVLink 4 (450 GB/s each way); the other parts get
the same share of their datasheet link. Not measured here: no multi-GPU run has been made."""
NVLINK_LATENCY_US = 25.0
"""Per collective over NVLink/NVSwitch: NCCL all-to-all latency at small sizes (assumed)."""
PCIE_LATENCY_US = 40.0
"""Per collective over PCIe (through the host bridge or a PCIe switch): assumed higher than NVLink."""


def _link(per_direction_gb_s: float) -> float:
    return round(INTERCONNECT_EFFICIENCY * per_direction_gb_s)


# Links per direction from the datasheets: NVLink 4 (H100/H200/H20 SXM) 450 GB/s, NVLink 5 (B200)
# 900 GB/s, NVLink 3 (A100 SXM) 300 GB/s; PCIe parts without an NVLink bridge talk over PCIe Gen5
# (H100 PCIe) or Gen4 (L40S) x16, 64 and 32 GB/s, and get less still behind a shared switch.
ACCELERATORS: dict[str, Accelerator] = {
    "h100": Accelerator("NVIDIA H100 SXM 80GB", 989.0, 79.1, 3.35, _link(450), NVLINK_LATENCY_US),
    "h100pcie": Accelerator("NVIDIA H100 PCIe 80GB", 756.0, 79.1, 2.0, _link(64), PCIE_LATENCY_US),
    "h200": Accelerator("NVIDIA H200 SXM 141GB", 989.0, 139.8, 4.8, _link(450), NVLINK_LATENCY_US),
    "h20": Accelerator("NVIDIA H20 96GB", 148.0, 94.9, 4.0, _link(450), NVLINK_LATENCY_US),
    "b200": Accelerator("NVIDIA B200 180GB", 2250.0, 178.4, 8.0, _link(900), NVLINK_LATENCY_US),
    "a100": Accelerator("NVIDIA A100 SXM 80GB", 312.0, 79.1, 2.04, _link(300), NVLINK_LATENCY_US),
    "l40s": Accelerator("NVIDIA L40S 48GB", 362.0, 44.4, 0.864, _link(32), PCIE_LATENCY_US),
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


ASSUMED_GPU_EFFICIENCY = 0.5
"""Share of the dense peak a Helios forward reaches on a datacenter GPU (gpu-review.md §1.2:
about 500 TF/s on an H100, the official repo's 0.909 s forward at 48%)."""
LAUNCH_SECONDS = {"cuda": 5e-6, "cpu": 1e-5}
"""Per kernel: a CUDA launch, or an eager CPU operator's dispatch."""
CPU_MEMORY_BYTES_PER_S = 20e9
"""A typical server core complex; only matters for weights far larger than a tiny model's."""


def forward_timing(config, num_parameters: int, device, dtype):
    """The cost model's forward time on a torch device (ForwardTiming), or None where the device's
    rates are unknown: a GPU at its datasheet peak times ASSUMED_GPU_EFFICIENCY, a CPU at its
    measured GEMM rate."""
    from .model_executor.cost_model import ForwardTiming

    peak, _ = device_peak_flops(device, dtype)
    if peak is None:
        return None
    weight_bytes = num_parameters * dtype.itemsize
    if device.type == "cuda":
        import torch

        known = accelerator_for_device_name(torch.cuda.get_device_name(device))
        return ForwardTiming.on_device(config, weight_bytes, peak * ASSUMED_GPU_EFFICIENCY, known.memory_tb_s * 1e12,
                                       LAUNCH_SECONDS["cuda"])
    return ForwardTiming.on_device(config, weight_bytes, peak, CPU_MEMORY_BYTES_PER_S, LAUNCH_SECONDS["cpu"])
