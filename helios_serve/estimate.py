"""``helios-serve estimate``: frames per second, real-time streams and memory per GPU, predicted.

Everything follows from FLOP counts (cost_model.py) at an assumed efficiency (MFU): the whole
pipeline, DiT, VAE decode and prompt encoding, is taken to run at that fraction of the GPU's
dense bf16 peak. One GPU serves its streams by batching them, so they share its frames/s.

A stream group can also be several GPUs: Ulysses sequence parallelism over N GPUs (each computes
its share of every forward, and they exchange activations in all-to-alls, costed at an assumed
interconnect rate and per-call latency), and optionally one more GPU that runs the VAE decode and
the text encoder, so that decoding chunk k overlaps denoising chunk k+1. These are predictions of
the cost model: no multi-GPU run has been made.
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
    sequence_parallel_flops,
    sequence_parallel_local_tokens,
    sequence_parallel_traffic,
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
MAX_SEQUENCE_PARALLEL = 8
"""Ranks of one sequence-parallel group: one NVLink node, which is what the interconnect figures
in hardware.py describe; an all-to-all across nodes would run at the network's rate instead."""


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


def sequence_parallel_sizes(config: HeliosTransformerConfig) -> list[int]:
    """Sequence-parallel sizes a model admits: Ulysses splits the attention heads across the ranks,
    so they must divide the heads (40 for the 14B model: 1, 2, 4, 5, 8), within one node."""
    return [n for n in range(1, MAX_SEQUENCE_PARALLEL + 1) if config.num_attention_heads % n == 0]


def estimate(model: ModelCosts, work: Workload, gpu: Accelerator, mfu: float, streams: int = 1,
             sequence_parallel_size: int = 1, vae_gpu: bool = False) -> dict:
    """The cost model's figures for ``work`` on stream groups of ``sequence_parallel_size`` DiT GPUs
    (plus one VAE and text-encoder GPU when ``vae_gpu``), each GPU at ``mfu`` of its peak."""
    config = model.transformer
    if sequence_parallel_size not in sequence_parallel_sizes(config):
        raise ValueError(f"sequence parallel size {sequence_parallel_size} is not one of "
                         f"{sequence_parallel_sizes(config)}")
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
    timing = _group_timing(model, work, gpu, mfu, sequence_parallel_size, vae_gpu)
    gpus_per_group = timing["gpus_per_group"]
    fps_per_stream = timing["fps_per_stream"]
    realtime_factor = fps_per_stream / work.playback_fps
    streams_per_group = math.floor(realtime_factor)
    # A one-GPU group keeps the whole-number streams per GPU it always had.
    streams_per_gpu = streams_per_group if gpus_per_group == 1 else streams_per_group / gpus_per_group
    local_tokens = sequence_parallel_local_tokens(stages[-1], sequence_parallel_size)
    memory = _memory(model, sum(local_tokens.values()), rows, (full_h, full_w), work, gpu, vae_gpu)
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
        "seconds_per_chunk": timing["seconds_per_chunk"],
        "dit_only_fps_per_gpu": timing["dit_only_fps_per_stream"] / sequence_parallel_size,
        "fps_per_gpu": fps_per_stream / gpus_per_group,
        "realtime_factor": realtime_factor,
        "realtime_streams_per_gpu": streams_per_gpu,
        "streams": streams,
        "gpus_for_streams": math.ceil(streams / streams_per_group) * gpus_per_group if streams_per_group else None,
        **timing,
        "realtime_streams_per_group": streams_per_group,
        "smallest_realtime_sequence_parallel": (
            None if streams_per_group else _smallest_realtime(model, work, gpu, mfu)),
        **memory,
    }


def _forward_cost(config: HeliosTransformerConfig, tokens: dict[str, int], rows: int, ranks: int, gpu: Accelerator,
                  flops_per_s: float) -> dict:
    """One forward of a request's rows on ``ranks`` GPUs: each rank's FLOPs at the achieved rate,
    then its sends at the interconnect rate and a fixed latency per collective. Communication is
    not taken to overlap compute: Ulysses' all-to-alls sit between a layer's projections and its
    attention, which need their results."""
    traffic = sequence_parallel_traffic(config, tokens, ranks, rows)
    rank_flops = rows * sequence_parallel_flops(config, tokens, ranks)["total"]
    sent = traffic["all_to_all"] + traffic["all_gather"]
    communication_s = sent / (gpu.interconnect_gb_s * 1e9) + traffic["collectives"] * gpu.collective_latency_us * 1e-6
    return {
        "rank_flops": rank_flops,
        "all_to_all_bytes": traffic["all_to_all"],
        "collectives": traffic["collectives"],
        "communication_s": communication_s,
        "seconds": rank_flops / flops_per_s + communication_s,
    }


def _group_timing(model: ModelCosts, work: Workload, gpu: Accelerator, mfu: float, ranks: int, vae_gpu: bool) -> dict:
    """Seconds per chunk and frames/s of ONE stream on a group of ``ranks`` DiT GPUs, plus the VAE GPU.

    Without a VAE GPU the decode and the prompt encoding run between forwards on the group (one
    rank decodes while the others wait), so a chunk takes DiT + VAE. With one, chunk k decodes
    while chunk k+1 denoises, and the slower of the two sets the pace: max(DiT, VAE). Streams
    batched on a group share its frames/s: a forward's cost grows with its rows (performance-model.md
    §3.8), and the per-collective latency is counted per stream, as if no forward were shared.
    """
    config = model.transformer
    rows = 2 if work.use_cfg else 1
    flops_per_s = gpu.bf16_tflops * 1e12 * mfu
    stages = forward_tokens(config, work.height, work.width, len(work.stage_steps))
    forwards = [_forward_cost(config, tokens, rows, ranks, gpu, flops_per_s) for tokens in stages]
    dit_chunk_s = sum(n * f["seconds"] for n, f in zip(work.stage_steps, forwards))
    full_h, full_w = stage_latent_sizes(work.height, work.width, 1)[0]
    vae_chunk_s = vae_decode_flops(LATENT_FRAMES_PER_CHUNK, full_h, full_w, model.vae) / flops_per_s
    text_s = rows * text_encoder_flops(config=model.text_encoder) / flops_per_s
    chunks = chunk_frame_counts(work.num_frames)
    dit_request_s = (len(chunks) + work.amplify_first_chunk) * dit_chunk_s  # the first chunk may run twice
    vae_request_s = len(chunks) * vae_chunk_s + text_s
    combine = max if vae_gpu else sum
    return {
        "sequence_parallel_size": ranks,
        "vae_gpu": vae_gpu,
        "gpus_per_group": ranks + vae_gpu,
        "tflop_per_forward_per_rank": [f["rank_flops"] / rows / 1e12 for f in forwards],
        "all_to_all_gb_per_forward": [f["all_to_all_bytes"] / rows / 1e9 for f in forwards],  # a row, as TFLOP
        "collectives_per_forward": forwards[0]["collectives"],
        "communication_s_per_chunk": sum(n * f["communication_s"] for n, f in zip(work.stage_steps, forwards)),
        "interconnect_gb_s": gpu.interconnect_gb_s,
        "collective_latency_us": gpu.collective_latency_us,
        "dit_seconds_per_chunk": dit_chunk_s,
        "vae_seconds_per_chunk": vae_chunk_s,
        "seconds_per_chunk": combine((dit_chunk_s, vae_chunk_s)),
        "dit_only_fps_per_stream": chunks[0] / dit_chunk_s,
        "fps_per_stream": sum(chunks) / combine((dit_request_s, vae_request_s)),
    }


def _smallest_realtime(model: ModelCosts, work: Workload, gpu: Accelerator, mfu: float) -> dict:
    """The smallest sequence-parallel size that makes one stream real time, without and with a
    VAE GPU (None where no size within a node does)."""
    def smallest(vae_gpu: bool) -> int | None:
        for ranks in sequence_parallel_sizes(model.transformer):
            if _group_timing(model, work, gpu, mfu, ranks, vae_gpu)["fps_per_stream"] >= work.playback_fps:
                return ranks
        return None

    return {"without_vae_gpu": smallest(False), "with_vae_gpu": smallest(True)}


def _memory(model: ModelCosts, largest_forward_tokens: int, rows: int, latent_hw: tuple[int, int], work: Workload,
            gpu: Accelerator, vae_gpu: bool = False) -> dict:
    """Memory of one DiT GPU: ``largest_forward_tokens`` is its share of the last stage's forward;
    with a VAE GPU the text encoder, the VAE and its decode workspace live there instead."""
    config = model.transformer
    weights = {  # bf16 transformer and text encoder, fp32 VAE, as served
        "transformer_gib": 2 * model.transformer_parameters / GIB,
        "text_encoder_gib": 2 * model.text_encoder_parameters / GIB,
        "vae_gib": 4 * model.vae_parameters / GIB,
    }
    vae_workspace = VAE_DECODE_WORKSPACE_GIB * (work.height * work.width) / (384 * 640)
    activation_row = largest_forward_tokens * activation_bytes_per_token(config) / GIB
    resident = weights["transformer_gib"] if vae_gpu else sum(weights.values()) + vae_workspace
    headroom = gpu.memory_gib - resident - RUNTIME_OVERHEAD_GIB
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
        f"{result['num_frames']}-frame requests{_group_title(result)}",
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
        *_sequence_parallel_lines(result),
        "",
        *(_group_lines(result, streams_asked) if result["gpus_per_group"] > 1 else _gpu_lines(result, streams_asked)),
        *_realtime_hint(result),
        "",
        f"weights                 DiT {gib['transformer_gib']:.1f} GiB (bf16), text encoder "
        f"{gib['text_encoder_gib']:.1f} GiB (bf16), VAE {gib['vae_gib']:.2f} GiB (fp32)",
        f"VAE decode workspace    {result['vae_decode_workspace_gib']:.1f} GiB; activations "
        f"{result['activation_gib_per_row']:.2f} GiB per row at the last stage",
        f"memory headroom         {result['memory_headroom_gib']:.1f} GiB"
        f"{' per DiT GPU' if result['gpus_per_group'] > 1 else ''}: up to "
        f"{result['max_requests_per_forward_by_memory']} requests per forward; "
        f"{result['state_mb_per_stream']:.0f} MB per waiting stream",
    ]
    return "\n".join(lines)


def _group_name(sequence_parallel_size: int, vae_gpu: bool) -> str:
    dit = f"SP {sequence_parallel_size}" if sequence_parallel_size > 1 else "1 DiT GPU"
    return f"{dit} + the VAE GPU" if vae_gpu else dit


def _group_title(result: dict) -> str:
    if result["gpus_per_group"] == 1:
        return ""
    return f"; per stream group {_group_name(result['sequence_parallel_size'], result['vae_gpu'])}"


def _sequence_parallel_lines(result: dict) -> list[str]:
    """What each rank computes and sends (prediction: rates assumed in hardware.py)."""
    if result["sequence_parallel_size"] == 1:
        return []
    return [
        f"per rank and forward    {' / '.join(_tflop(t) for t in result['tflop_per_forward_per_rank'])} TFLOP; "
        f"all-to-all sends {' / '.join(f'{gb:.2f}' for gb in result['all_to_all_gb_per_forward'])} GB "
        f"(stage by stage); {result['collectives_per_forward']} collectives",
        f"communication           {result['communication_s_per_chunk']:.3f} s per chunk at an assumed "
        f"{result['interconnect_gb_s']:g} GB/s and {result['collective_latency_us']:g} µs per collective",
    ]


def _gpu_lines(result: dict, streams_asked: bool) -> list[str]:
    """One GPU per stream group: the report as it has always read."""
    lines = [
        f"frames/s per GPU        {result['fps_per_gpu']:.2f} "
        f"(DiT alone {result['dit_only_fps_per_gpu']:.2f}; {result['seconds_per_chunk']:.2f} s per chunk)",
        f"real-time factor        {result['realtime_factor']:.2f}x at {result['playback_fps']:g} fps playback",
        f"real-time streams/GPU   {result['realtime_streams_per_gpu']}",
    ]
    if streams_asked:
        needed = result["gpus_for_streams"]
        lines.append(f"GPUs for {result['streams']} streams      " + (
            str(needed) if needed else "none suffice: one stream needs more than a GPU at this efficiency"))
    return lines


def _group_lines(result: dict, streams_asked: bool) -> list[str]:
    group, per_group = result["gpus_per_group"], result["realtime_streams_per_group"]
    name = _group_name(result["sequence_parallel_size"], result["vae_gpu"])
    pace = "alongside it" if result["vae_gpu"] else "after it"
    lines = [
        f"frames/s per stream     {result['fps_per_stream']:.2f} (DiT alone {result['dit_only_fps_per_stream']:.2f}; "
        f"{result['seconds_per_chunk']:.2f} s per chunk: DiT {result['dit_seconds_per_chunk']:.2f} s, "
        f"VAE {result['vae_seconds_per_chunk']:.2f} s {pace})",
        f"frames/s per GPU        {result['fps_per_gpu']:.2f} (a group of {group} GPUs: {name})",
        f"real-time factor        {result['realtime_factor']:.2f}x at {result['playback_fps']:g} fps playback",
        f"real-time streams/GPU   {result['realtime_streams_per_gpu']:.2f} "
        f"({per_group} stream{'s' if per_group != 1 else ''} per group of {group} GPUs)",
    ]
    if streams_asked:
        needed = result["gpus_for_streams"]
        lines.append(f"GPUs for {result['streams']} streams      " + (
            f"{needed} ({needed // group} groups of {group})" if needed
            else f"none suffice: one stream needs more than {name} at this efficiency"))
    return lines


def _realtime_hint(result: dict) -> list[str]:
    """Where one stream cannot keep up, the smallest groups that would."""
    smallest = result["smallest_realtime_sequence_parallel"]
    if smallest is None:
        return []
    options = [f"--sequence-parallel-size {n}{' --vae-gpu' if vae else ''} ({n + vae} GPUs)"
               for vae, n in ((False, smallest["without_vae_gpu"]), (True, smallest["with_vae_gpu"])) if n]
    if not options:
        return [f"real time needs         more than one node: no sequence-parallel size up to "
                f"{MAX_SEQUENCE_PARALLEL} keeps one stream at {result['playback_fps']:g} fps at this efficiency"]
    return [f"real time needs         {' or '.join(options)}"]


def run_estimate(args) -> int:
    """The CLI command (arguments from cli.py)."""
    model, variant = model_costs_and_recipe(args.model, args.download_dir, args.revision)
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
    sizes = sequence_parallel_sizes(model.transformer)
    if args.sequence_parallel_size not in sizes:
        raise ValueError(f"--sequence-parallel-size must divide the model's {model.transformer.num_attention_heads} "
                         f"attention heads and fit one {MAX_SEQUENCE_PARALLEL}-GPU node: one of "
                         f"{', '.join(map(str, sizes))}; got {args.sequence_parallel_size}")
    result = estimate(model, work, ACCELERATORS[args.gpu], args.mfu, args.streams, args.sequence_parallel_size,
                      args.vae_gpu)
    print(json.dumps(result, indent=2) if args.json else format_report(result, args.streams > 1))
    return 0


def model_costs_and_recipe(name: str, download_dir: str | None = None, revision: str | None = None):
    """(ModelCosts, ModelVariant) of a model named as every command names it (resolve_model)."""
    from .model_executor.checkpoint import (
        MODEL_ALIASES,
        RANDOM_MODEL,
        TINY_MODELS,
        official_variant,
        read_variant,
        resolve_model,
    )

    alias = {repo_id: alias for alias, repo_id in MODEL_ALIASES.items()}.get(name, name)
    # The released models' figures come from their published configs: no 80 GB download to count FLOPs.
    if alias in MODEL_ALIASES:
        return ModelCosts(), official_variant(alias.removeprefix("helios-"))
    if name == RANDOM_MODEL:  # the released architecture with random weights, sampled like Distilled
        return ModelCosts(), official_variant("distilled")
    if name in TINY_MODELS:
        raise ValueError(f"{name} is a tiny test model: its GPU figures would say nothing. estimate takes "
                         f"helios-base|mid|distilled, {RANDOM_MODEL} (the released architecture), a Hugging Face "
                         f"repo id or a checkpoint directory")
    root = Path(resolve_model(name, download_dir, revision))
    try:
        model = ModelCosts.from_checkpoint(root)
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {root} as a Helios checkpoint: {exc}") from None
    return model, read_variant(root)


def _parse_steps(text: str, stages: int) -> tuple[int, ...]:
    try:
        steps = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise ValueError(f"--steps must be comma-separated integers, got {text!r}") from None
    if len(steps) != stages or min(steps) < 1:
        raise ValueError(f"--steps needs {stages} positive value(s) for this model, got {text!r}")
    return steps
