"""Loading diffusers-format Helios transformer checkpoints, and seeded random weights.

Every parameter of ``HeliosTransformer`` is built from one or more checkpoint tensors,
stacked along dim 0 (the fused q|k|v and k|v projections). The mapping is the single
table ``WEIGHT_NAME_TABLE``; everything else here is bookkeeping and error reporting.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open

from .config import HeliosTransformerConfig
from .models.helios_transformer import HeliosTransformer

CONFIG_NAME = "config.json"
SINGLE_FILE_NAME = "diffusion_pytorch_model.safetensors"
INDEX_FILE_NAME = "diffusion_pytorch_model.safetensors.index.json"

# (our parameter, as a regex) -> checkpoint tensors it is stacked from, formatted with the groups.
WEIGHT_NAME_TABLE: list[tuple[str, tuple[str, ...]]] = [
    (r"patch_embedding\.(weight|bias)", ("patch_embedding.{0}",)),
    (r"history_patch\.(short|mid|long)\.(weight|bias)", ("patch_{0}.{1}",)),
    (r"time_embedding\.(linear_1|linear_2)\.(weight|bias)", ("condition_embedder.time_embedder.{0}.{1}",)),
    (r"time_embedding\.time_proj\.(weight|bias)", ("condition_embedder.time_proj.{0}",)),
    (r"text_embedding\.(linear_1|linear_2)\.(weight|bias)", ("condition_embedder.text_embedder.{0}.{1}",)),
    (r"output_scale_shift_table", ("norm_out.scale_shift_table",)),
    (r"proj_out\.(weight|bias)", ("proj_out.{0}",)),
    (r"blocks\.(\d+)\.scale_shift_table", ("blocks.{0}.scale_shift_table",)),
    (
        r"blocks\.(\d+)\.self_attn\.to_qkv\.(weight|bias)",
        ("blocks.{0}.attn1.to_q.{1}", "blocks.{0}.attn1.to_k.{1}", "blocks.{0}.attn1.to_v.{1}"),
    ),
    (r"blocks\.(\d+)\.self_attn\.(norm_q|norm_k)\.weight", ("blocks.{0}.attn1.{1}.weight",)),
    (r"blocks\.(\d+)\.self_attn\.to_out\.(weight|bias)", ("blocks.{0}.attn1.to_out.0.{1}",)),
    (r"blocks\.(\d+)\.self_attn\.history_key_scale", ("blocks.{0}.attn1.history_key_scale",)),
    (r"blocks\.(\d+)\.cross_attn\.to_q\.(weight|bias)", ("blocks.{0}.attn2.to_q.{1}",)),
    (r"blocks\.(\d+)\.cross_attn\.to_kv\.(weight|bias)", ("blocks.{0}.attn2.to_k.{1}", "blocks.{0}.attn2.to_v.{1}")),
    (r"blocks\.(\d+)\.cross_attn\.(norm_q|norm_k)\.weight", ("blocks.{0}.attn2.{1}.weight",)),
    (r"blocks\.(\d+)\.cross_attn\.to_out\.(weight|bias)", ("blocks.{0}.attn2.to_out.0.{1}",)),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", ("blocks.{0}.norm2.{1}",)),
    (r"blocks\.(\d+)\.ffn\.fc1\.(weight|bias)", ("blocks.{0}.ffn.net.0.proj.{1}",)),
    (r"blocks\.(\d+)\.ffn\.fc2\.(weight|bias)", ("blocks.{0}.ffn.net.2.{1}",)),
]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: the message names the file or tensor."""


def checkpoint_names(param_name: str) -> tuple[str, ...]:
    for pattern, templates in WEIGHT_NAME_TABLE:
        match = re.fullmatch(pattern, param_name)
        if match:
            return tuple(t.format(*match.groups()) for t in templates)
    raise KeyError(f"no checkpoint mapping for parameter {param_name!r}")


def checkpoint_shapes(model: HeliosTransformer) -> dict[str, tuple[str, int, tuple[int, ...]]]:
    """checkpoint tensor name -> (our parameter, part index, expected shape)."""
    shapes = {}
    for param_name, param in model.named_parameters():
        names = checkpoint_names(param_name)
        part_shape = (param.shape[0] // len(names), *param.shape[1:])
        for index, name in enumerate(names):
            shapes[name] = (param_name, index, part_shape)
    return shapes


def _describe(names: set[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return shown + more


def _checkpoint_files(folder: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from the index of a sharded checkpoint or the single file."""
    index_path = folder / INDEX_FILE_NAME
    if not index_path.exists():
        single = folder / SINGLE_FILE_NAME
        if not single.exists():
            raise CheckpointError(f"no {INDEX_FILE_NAME} or {SINGLE_FILE_NAME} in {folder}")
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"corrupt checkpoint index {index_path}: {exc!r}") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"corrupt checkpoint index {index_path}: weight_map must map names to file names")
    files = {name: folder / shard for name, shard in weight_map.items()}
    for shard in sorted(set(files.values())):
        if not shard.is_file():
            raise CheckpointError(f"checkpoint index {index_path} names shard {shard.name}, which does not exist")
        with safe_open(shard, framework="pt") as f:
            stored = set(f.keys())
        listed = {name for name, path in files.items() if path == shard}
        if listed - stored:
            raise CheckpointError(
                f"checkpoint index {index_path} lists tensors missing from {shard.name}: {_describe(listed - stored)}"
            )
    return files


def resolve_transformer_folder(path: str | os.PathLike) -> Path:
    """The folder holding config.json: ``path`` itself or its ``transformer/`` subfolder."""
    folder = Path(path)
    if (folder / CONFIG_NAME).is_file():
        return folder
    if (folder / "transformer" / CONFIG_NAME).is_file():
        return folder / "transformer"
    raise CheckpointError(f"no {CONFIG_NAME} in {folder} or {folder / 'transformer'}")


def default_batch_invariance(device, batch_invariant: bool | None) -> bool:
    """Batch-invariant GEMMs by default on CPU only (see layers/linear.py)."""
    if batch_invariant is not None:
        return batch_invariant
    return torch.device(device).type == "cpu"


def load_transformer(
    path, dtype: torch.dtype = torch.bfloat16, device="cpu", batch_invariant: bool | None = None,
    kernels: str | None = None, attention: str = "sdpa",
) -> HeliosTransformer:
    from .layers.ops import default_backend

    folder = resolve_transformer_folder(path)
    config = HeliosTransformerConfig.from_json_file(folder / CONFIG_NAME)
    with torch.device("meta"):
        model = HeliosTransformer(config, default_batch_invariance(device, batch_invariant),
                                  kernels or default_backend(device), attention)
    expected = checkpoint_shapes(model)
    files = _checkpoint_files(folder)
    missing, unexpected = set(expected) - set(files), set(files) - set(expected)
    if missing:
        raise CheckpointError(f"checkpoint {folder} is missing tensors: {_describe(missing)}")
    if unexpected:
        raise CheckpointError(f"checkpoint {folder} has unexpected tensors: {_describe(unexpected)}")

    parts: dict[str, list[torch.Tensor | None]] = {}
    for shard in sorted(set(files.values())):
        with safe_open(shard, framework="pt", device="cpu") as f:
            for name in (n for n, p in files.items() if p == shard):
                param_name, index, shape = expected[name]
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != shape:
                    raise CheckpointError(
                        f"tensor {name} in {shard.name} has shape {tuple(tensor.shape)}, expected {shape}"
                    )
                target = torch.float32 if model.is_fp32_parameter(param_name) else dtype
                parts.setdefault(param_name, [None] * len(checkpoint_names(param_name)))[index] = tensor.to(target)
                _assign_if_complete(model, param_name, parts, device)
    return model.eval()


def _assign_if_complete(model: torch.nn.Module, param_name: str, parts: dict, device) -> None:
    pieces = parts[param_name]
    if any(p is None for p in pieces):
        return
    value = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    set_parameter(model, param_name, value.to(device))
    del parts[param_name]


def set_parameter(model: torch.nn.Module, param_name: str, value: torch.Tensor) -> None:
    """Replace a (possibly meta) parameter with ``value``."""
    module_name, _, attr = param_name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, attr, torch.nn.Parameter(value, requires_grad=False))


def random_init(model: HeliosTransformer, seed: int, dtype: torch.dtype, device, draw_on_device: bool = False) -> None:
    """Deterministic random weights of realistic scale, the same on every machine.

    Values are drawn in fp32 on the CPU one parameter at a time, then cast and moved, so the
    peak host memory is one parameter whatever the model size. ``draw_on_device`` draws them on
    ``device`` instead: seconds rather than minutes for the 14B model on a GPU, but the values
    are then those of that device's generator. On the meta device nothing is drawn: every
    parameter gets its dtype and shape, which is all meta tensors have.
    """
    device = torch.device(device)
    draw_device = device if draw_on_device else torch.device("cpu")
    generator = torch.Generator(draw_device).manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        target = torch.float32 if model.is_fp32_parameter(name) else dtype
        if device.type == "meta":
            set_parameter(model, name, torch.empty(param.shape, dtype=target, device=device))
            continue
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32, device=draw_device)
        if "history_key_scale" in name:
            value = torch.ones_like(noise)
        elif "scale_shift_table" in name:
            value = noise / math.sqrt(param.shape[-1])
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + 0.1 * noise
        elif param.ndim == 1:
            value = 0.02 * noise
        else:
            value = noise / math.sqrt(math.prod(param.shape[1:]))  # 1 / sqrt(fan_in)
        set_parameter(model, name, value.to(device=device, dtype=target))
