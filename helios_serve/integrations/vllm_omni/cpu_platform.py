"""A CPU platform for vLLM-Omni 0.30, which ships platforms for accelerators only.

It exists so the vLLM-Omni integration can be tested for real on machines without a GPU.
It is only selected when HELIOS_OMNI_CPU=1 (see ``cpu_platform`` in this package), so it
never changes what vLLM-Omni does on a GPU host. The base classes give it vLLM's CPU
platform; the overrides fill in what vLLM-Omni's accelerator-oriented engine asks of a
device: memory figures, no-op synchronisation, no torch.compile, and an attention backend
(``cpu_attention``; our Helios transformer does not use it, other vLLM-Omni code may).
"""

from __future__ import annotations

import contextlib

import psutil
import torch
from vllm.platforms.cpu import CpuPlatform
from vllm_omni.platforms.interface import OmniPlatform, OmniPlatformEnum


class CpuOmniPlatform(OmniPlatform, CpuPlatform):
    _omni_enum = OmniPlatformEnum.OOT
    device_name = "cpu"
    device_type = "cpu"
    dispatch_key = "CPU"

    @classmethod
    def get_diffusion_attn_backend_cls(cls, selected_backend, head_size, allow_trtllm_default=False) -> str:
        # A path, not an import: the attention modules import the platform being built here.
        return "helios_serve.integrations.vllm_omni.cpu_attention.CpuSDPABackend"

    # -- the device -------------------------------------------------------------------------
    @classmethod
    def get_torch_device(cls, local_rank: int | None = None) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def get_device_count(cls) -> int:
        return 1

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return "cpu"

    @classmethod
    def get_device_version(cls) -> str | None:
        return None

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        """One CPU 'device': nothing to select."""

    @classmethod
    def synchronize(cls) -> None:
        """CPU kernels finish before they return."""

    @classmethod
    def empty_cache(cls) -> None:
        """No caching allocator on CPU."""

    @classmethod
    def reset_peak_memory_stats(cls, device=None) -> None:
        """No allocator statistics on CPU."""

    # -- memory: the machine's RAM stands in for device memory -------------------------------
    @classmethod
    def get_free_memory(cls, device: torch.device | None = None) -> int:
        return psutil.virtual_memory().available

    @classmethod
    def get_device_memory(cls, device: torch.device | None = None) -> tuple[int, int]:
        memory = psutil.virtual_memory()
        return memory.available, memory.total

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        return psutil.virtual_memory().total

    @classmethod
    def memory_reserved(cls, device=None) -> int:
        return 0

    @classmethod
    def memory_allocated(cls, device=None) -> int:
        return 0

    @classmethod
    def max_memory_allocated(cls, device=None) -> int:
        return 0

    @classmethod
    def max_memory_reserved(cls, device=None) -> int:
        return 0

    # -- features the engine probes -----------------------------------------------------------
    @classmethod
    def supports_torch_inductor(cls) -> bool:
        return False

    @classmethod
    def supports_cpu_offload(cls) -> bool:
        return False  # the weights already live in host memory

    @classmethod
    def create_autocast_context(cls, *, device_type: str, dtype: torch.dtype, enabled: bool = True):
        return contextlib.nullcontext()  # run in the dtype the weights were loaded in
