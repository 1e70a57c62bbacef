"""Where data crosses between the host and the device, and a counter of the crossings that stall.

Every unit of work keeps its tensors on the runner's device. Data goes up through
``to_device`` (pinned, non-blocking on CUDA: the host never waits for the GPU's queue) and comes
back only through ``to_host``, which only the decode unit calls: a denoising step or a stage
transition never makes the host wait for the device.

The ``meta`` device is how CI sees what only a GPU would show: any CPU tensor of more than
0 dims meeting a meta tensor raises, as on CUDA, and a data-dependent host read (``.item()``,
``bool(tensor)``) raises too. Meta tensors hold no data, so ``to_host`` gives zeros for them:
the decode's single copy back is the one place where the guard cannot look at values.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without a host-device synchronisation.

    On CUDA the data is staged in pinned memory (PyTorch's caching host allocator keeps the
    block until the copy is done) and copied on the current stream, asynchronously.
    """
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor on the CPU (this waits for the device). Zeros for meta tensors, which hold no data."""
    if tensor.device.type == "meta":
        return torch.zeros_like(tensor, device="cpu")
    return tensor.cpu()


def _is_host(value) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cpu"


def _is_device(value) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type != "cpu"


class HostSyncCounter(TorchDispatchMode):
    """Counts the operations that make the host wait for the device, while active.

    Three kinds: scalar reads of device tensors (``.item()``, ``bool()``, ``int()``), results
    that land on the host from device inputs (``.cpu()``, ``to_host``), and blocking copies
    from host to device (``.to(device)`` of host data without ``non_blocking``, ``torch.tensor(...,
    device=)``). Works on any device, the meta device included, where it sees every crossing
    a GPU would make. ``events`` names each one, for a useful failure message.
    """

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    @property
    def count(self) -> int:
        return len(self.events)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        name = str(func.overloadpacket.__name__)
        if name == "_local_scalar_dense" and any(_is_device(a) for a in inputs):
            self.events.append(f"scalar read ({func})")
        elif any(_is_device(a) for a in inputs) and any(_is_host(o) for o in outputs):
            self.events.append(f"device-to-host ({func})")
        elif name in ("_to_copy", "copy_") and not kwargs.get("non_blocking", False) and self._host_to_device(
            name, args, outputs
        ):
            self.events.append(f"blocking host-to-device ({func})")
        return out

    @staticmethod
    def _host_to_device(name: str, args, outputs) -> bool:
        if name == "copy_":  # copy_(destination, source, non_blocking=False)
            blocking = not (len(args) > 2 and args[2])
            return blocking and _is_device(args[0]) and _is_host(args[1])
        return _is_host(args[0]) and any(_is_device(o) for o in outputs)
