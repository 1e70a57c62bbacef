"""The diffusion attention backend of our vLLM-Omni CPU platform (see cpu_platform)."""

from __future__ import annotations

from vllm_omni.diffusion.attention.backends.sdpa import SDPABackend, SDPAImpl


class CpuSDPAImpl(SDPAImpl):
    """vLLM-Omni's torch-SDPA attention, whose computation is device-agnostic; its
    ``forward`` only dispatches to known accelerators, so route CPU to the same code."""

    def forward(self, query, key, value, attn_metadata=None):
        return self.forward_cuda(query, key, value, attn_metadata)


class CpuSDPABackend(SDPABackend):
    @staticmethod
    def get_name() -> str:
        return "CPU_SDPA"

    @staticmethod
    def get_impl_cls() -> type[CpuSDPAImpl]:
        return CpuSDPAImpl
