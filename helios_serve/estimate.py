"""``helios-serve estimate``: frames per second, real-time streams and memory per GPU, predicted.

Everything follows from FLOP counts (cost_model.py) at an assumed efficiency (MFU): the whole
pipeline, DiT, VAE decode and prompt encoding, is taken to run at that fraction of the GPU's
dense bf16 peak. One GPU serves its streams by batching them, so they share its frames/s.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .hardware import ACCELERATORS, Accelerator
from .model_executor.config import HELIOS_14B, HeliosTransformerConfig
from .model_executor.cost_model import (
    GIB,
    TEXT_TOKENS,
    Umt5Config,
    WanVaeConfig,
    activation_bytes_per_token,
    forward_tokens,
    stage_latent_sizes,
    text_encoder_flops,
    text_encoder_parameters,
    transformer_flops,
    transformer_parameters,
    vae_decode_flops,
)
from .model_executor.step_io import LATENT_FRAMES_PER_CHUNK, chunk_frame_counts

WAN_VAE_PARAMETERS = 126_892_531
"""diffusers AutoencoderKLWan() as released with Wan-2.1 (encoder and decoder; checked in tests)."""
VAE_DECODE_WORKSPACE_GIB = 6.2
"""Peak memory of an fp32 VAE decode of one 384x640 chunk (vLLM-Omni's Helios recipe, A100);
scaled with the pixel count."""
RUNTIME_OVERHEAD_GIB = 2.0
"""CUDA context, cuBLAS/attention workspaces and allocator slack."""
STATE_LATENT_FRAMES_PER_STREAM = 20 + LATENT_FRAMES_PER_CHUNK
"""History (16 + 2 + 1 + anchor) and the noisy chunk, fp32, kept per stream between steps."""


@dataclass(frozen=True)
class ModelCosts:
    """The three networks of a Helios checkpoint and their parameter counts."""

    transformer: HeliosTransformerConfig = HELIOS_14B
    text_encoder: Umt5Config = field(default_factory=Umt5Config)
    vae: WanVaeConfig = field(default_factory=WanVaeConfig)
    transformer_parameters: int = transformer_parameters(HELIOS_14B)
    text_encoder_parameters: int = text_encoder_parameters()
    vae_parameters: int = WAN_VAE_PARAMETERS

    @classmethod
    def from_checkpoint(cls, root: Path) -> ModelCosts:
        """Configs from the checkpoint's config.json files, parameter counts from its safetensors headers."""
        def config(folder: str) -> dict:
            return json.loads((root / folder / "config.json").read_text(encoding="utf-8"))

        text, vae = config("text_encoder"), config("vae")
        return cls(
            HeliosTransformerConfig.from_dict(config("transformer")),
            Umt5Config(text["d_model"], text["num_layers"], text["d_ff"], text["num_heads"], text["d_kv"],
                       text["vocab_size"]),
            WanVaeConfig(vae["base_dim"], vae["z_dim"], tuple(vae["dim_mult"]), vae["num_res_blocks"],
                         tuple(vae["temperal_downsample"][::-1])),
            *(safetensors_parameters(root / folder) for folder in ("transformer", "text_encoder", "vae")),
        )


def safetensors_parameters(folder: Path) -> int:
    """Elements of every tensor in a folder's .safetensors files, read from their headers only."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    if not total:
        raise ValueError(f"no safetensors weights in {folder}")
    return total


@dataclass(frozen=True)
class Workload:
    variant: str
    stage_steps: tuple[int, ...]
    use_cfg: bool
    amplify_first_chunk: bool
    height: int = 384
    width: int = 640
    num_frames: int = 240
    playback_fps: float = 24.0


def estimate(model: ModelCosts, work: Workload, gpu: Accelerator, mfu: float, streams: int = 1) -> dict:
    config = model.transformer
    rows = 2 if work.use_cfg else 1
    stages = forward_tokens(config, work.height, work.width, len(work.stage_steps))
    forward_tflop = [transformer_flops(config, tokens)["total"] / 1e12 for tokens in stages]
    chunk_tflop = rows * sum(n * f for n, f in zip(work.stage_steps, forward_tflop))
    full_h, full_w = stage_latent_sizes(work.height, work.width, 1)[0]
    vae_tflop = vae_decode_flops(LATENT_FRAMES_PER_CHUNK, full_h, full_w, model.vae) / 1e12
    text_tflop = rows * text_encoder_flops(config=model.text_encoder) / 1e12

    chunks = chunk_frame_counts(work.num_frames)
    frames = sum(chunks)
    amplified = chunk_tflop if work.amplify_first_chunk else 0.0  # the first chunk runs twice the steps
    request_tflop = len(chunks) * (chunk_tflop + vae_tflop) + amplified + text_tflop
    achieved_tflops = gpu.bf16_tflops * mfu
    fps = frames / (request_tflop / achieved_tflops)
    realtime_factor = fps / work.playback_fps
    streams_per_gpu = math.floor(realtime_factor)
    memory = _memory(model, stages[-1]["total"], rows, (full_h, full_w), work, gpu)
    return {
        "variant": work.variant,
        "gpu": gpu.name,
        "mfu": mfu,
        "size": f"{work.width}x{work.height}",
        "stage_steps": list(work.stage_steps),
        "cfg": work.use_cfg,
        "amplify_first_chunk": work.amplify_first_chunk,
        "num_frames": frames,
        "playback_fps": work.playback_fps,
        "history_tokens": stages[0]["history"],
        "tokens_per_forward": [s["total"] for s in stages],
        "noisy_tokens_per_forward": [s["noisy"] for s in stages],
        "tflop_per_forward": forward_tflop,
        "forwards_per_chunk": rows * sum(work.stage_steps),
        "tflop_per_chunk": chunk_tflop,
        "tflop_per_frame": chunk_tflop / chunks[0],
        "vae_tflop_per_chunk": vae_tflop,
        "text_encoder_tflop_per_request": text_tflop,
        "request_tflop": request_tflop,
        "pipeline_tflop_per_frame": request_tflop / frames,
        "seconds_per_chunk": (chunk_tflop + vae_tflop) / achieved_tflops,
        "dit_only_fps_per_gpu": chunks[0] / (chunk_tflop / achieved_tflops),
        "fps_per_gpu": fps,
        "realtime_factor": realtime_factor,
        "realtime_streams_per_gpu": streams_per_gpu,
        "streams": streams,
        "gpus_for_streams": math.ceil(streams / streams_per_gpu) if streams_per_gpu else None,
        **memory,
    }


def _memory(model: ModelCosts, largest_forward_tokens: int, rows: int, latent_hw: tuple[int, int], work: Workload,
            gpu: Accelerator) -> dict:
    config = model.transformer
    weights = {  # bf16 transformer and text encoder, fp32 VAE, as served
        "transformer_gib": 2 * model.transformer_parameters / GIB,
        "text_encoder_gib": 2 * model.text_encoder_parameters / GIB,
        "vae_gib": 4 * model.vae_parameters / GIB,
    }
    vae_workspace = VAE_DECODE_WORKSPACE_GIB * (work.height * work.width) / (384 * 640)
    activation_row = largest_forward_tokens * activation_bytes_per_token(config) / GIB
    headroom = gpu.memory_gib - sum(weights.values()) - vae_workspace - RUNTIME_OVERHEAD_GIB
    latent_state = 4 * config.in_channels * STATE_LATENT_FRAMES_PER_STREAM * math.prod(latent_hw)
    text_state = rows * 2 * TEXT_TOKENS * config.text_dim  # bf16 prompt embeddings
    return {
        "weights_gib": weights,
        "vae_decode_workspace_gib": vae_workspace,
        "activation_gib_per_row": activation_row,
        "memory_headroom_gib": headroom,
        "max_requests_per_forward_by_memory": max(0, math.floor(headroom / (rows * activation_row))),
        "state_mb_per_stream": (latent_state + text_state) / 1e6,
    }


def _tflop(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def format_report(result: dict, streams_asked: bool) -> str:
    gib = result["weights_gib"]
    steps = ",".join(str(n) for n in result["stage_steps"])
    lines = [
        f"Helios-{result['variant'].capitalize()} on {result['gpu']} at {100 * result['mfu']:.0f}% MFU, "
        f"{result['size']}, steps {steps}{' with CFG' if result['cfg'] else ''}"
        f"{', first chunk amplified' if result['amplify_first_chunk'] else ''}, "
        f"{result['num_frames']}-frame requests",
        "",
        f"tokens per forward      {' / '.join(f'{t:,}' for t in result['tokens_per_forward'])} "
        f"(stage by stage, {result['history_tokens']:,} of them history)",
        f"TFLOP per forward       {' / '.join(_tflop(t) for t in result['tflop_per_forward'])}",
        f"DiT per chunk           {_tflop(result['tflop_per_chunk'])} TFLOP in {result['forwards_per_chunk']} forwards "
        f"= {_tflop(result['tflop_per_frame'])} TFLOP per frame",
        f"VAE decode per chunk    {_tflop(result['vae_tflop_per_chunk'])} TFLOP; text encoder "
        f"{_tflop(result['text_encoder_tflop_per_request'])} TFLOP per request",
        f"whole request           {_tflop(result['request_tflop'])} TFLOP "
        f"= {_tflop(result['pipeline_tflop_per_frame'])} TFLOP per frame",
        "",
        f"frames/s per GPU        {result['fps_per_gpu']:.2f} "
        f"(DiT alone {result['dit_only_fps_per_gpu']:.2f}; {result['seconds_per_chunk']:.2f} s per chunk)",
        f"real-time factor        {result['realtime_factor']:.2f}x at {result['playback_fps']:g} fps playback",
        f"real-time streams/GPU   {result['realtime_streams_per_gpu']}",
    ]
    if streams_asked:
        needed = result["gpus_for_streams"]
        lines.append(f"GPUs for {result['streams']} streams      " + (
            str(needed) if needed else "none suffice: one stream needs more than a GPU at this efficiency"))
    lines += [
        "",
        f"weights                 DiT {gib['transformer_gib']:.1f} GiB (bf16), text encoder "
        f"{gib['text_encoder_gib']:.1f} GiB (bf16), VAE {gib['vae_gib']:.2f} GiB (fp32)",
        f"VAE decode workspace    {result['vae_decode_workspace_gib']:.1f} GiB; activations "
        f"{result['activation_gib_per_row']:.2f} GiB per row at the last stage",
        f"memory headroom         {result['memory_headroom_gib']:.1f} GiB: up to "
        f"{result['max_requests_per_forward_by_memory']} requests per forward; "
        f"{result['state_mb_per_stream']:.0f} MB per waiting stream",
    ]
    return "\n".join(lines)


def run_estimate(args) -> int:
    """The CLI command (arguments from cli.py)."""
    from .model_executor.checkpoint import MODEL_ALIASES, official_variant, read_variant, resolve_model

    if args.model in MODEL_ALIASES:
        model, variant = ModelCosts(), official_variant(args.model.removeprefix("helios-"))
    else:
        root = resolve_model(args.model)
        if isinstance(root, str):
            raise ValueError(f"estimate needs a released model or a checkpoint; {args.model} is built in and tiny")
        try:
            model = ModelCosts.from_checkpoint(root)
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {root} as a Helios checkpoint: {exc}") from None
        variant = read_variant(root)
    steps = tuple(variant.default_steps) if args.steps is None else _parse_steps(args.steps, len(variant.default_steps))
    guidance = variant.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
    amplify = variant.default_amplify_first_chunk and not args.no_amplify
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.streams < 1:
        raise ValueError(f"--streams must be at least 1, got {args.streams}")
    if args.height % 64 or args.width % 64:
        raise ValueError(f"--height and --width must be multiples of 64 (the pyramid), got {args.height}x{args.width}")
    work = Workload(variant.name, steps, guidance > 1.0, amplify, args.height, args.width,
                    args.num_frames or variant.default_num_frames, args.fps)
    result = estimate(model, work, ACCELERATORS[args.gpu], args.mfu, args.streams)
    print(json.dumps(result, indent=2) if args.json else format_report(result, args.streams > 1))
    return 0


def _parse_steps(text: str, stages: int) -> tuple[int, ...]:
    try:
        steps = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise ValueError(f"--steps must be comma-separated integers, got {text!r}") from None
    if len(steps) != stages or min(steps) < 1:
        raise ValueError(f"--steps needs {stages} positive value(s) for this model, got {text!r}")
    return steps
