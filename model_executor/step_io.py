"""What the serving layer hands the model executor for a request. Torch-free on purpose.

``RequestSpec`` is fully resolved: every default has been filled in from the model variant
and validated by the serving layer, so the executor only does arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

FRAMES_PER_CHUNK = 33
LATENT_FRAMES_PER_CHUNK = 9
LATENT_CHANNELS = 16
HISTORY_SIZES = (16, 2, 1)  # long, mid, short-term history latents (spec §3.1)


def chunk_frame_counts(num_frames: int) -> list[int]:
    """Frames of each chunk: 33 each, the last trimmed so the video has 4n+1 frames (spec §3.1)."""
    num_chunks = max(1, math.ceil(num_frames / FRAMES_PER_CHUNK))
    total = FRAMES_PER_CHUNK * num_chunks
    trimmed = (total - 1) // 4 * 4 + 1
    return [FRAMES_PER_CHUNK] * (num_chunks - 1) + [FRAMES_PER_CHUNK - (total - trimmed)]


@dataclass(frozen=True)
class PromptSwitch:
    """From chunk ``from_chunk`` on, the video follows ``prompt``. With ``transition_chunks`` t > 0
    the text embedding moves there linearly: chunk from_chunk + i (i < t) uses the blend
    (1 - w) * before + w * new with w = (i + 1) / (t + 1), where ``before`` is what chunk
    from_chunk - 1 used; from chunk from_chunk + t on, the new prompt alone. A blend holds at
    most MAX_BLEND_PROMPTS prompts (the smallest weights are dropped, the rest rescaled)."""

    from_chunk: int
    prompt: str
    transition_chunks: int = 0


PromptMix = tuple[tuple[str, float], ...]
MAX_BLEND_PROMPTS = 4
"""The most prompts one chunk's text blends (see prompt_mix)."""
"""A chunk's text conditioning: (prompt, weight) pairs, weights summing to 1."""


def prompt_mix(prompt: str, switches: tuple[PromptSwitch, ...], chunk_index: int) -> PromptMix:
    """The text conditioning of chunk ``chunk_index``: ``prompt`` until the first switch, then
    as ``switches`` (ordered by from_chunk) say. Pure arithmetic on the schedule, so a video and
    its resumed or extended runs agree exactly."""
    active = [s for s in switches if s.from_chunk <= chunk_index]
    if not active:
        return ((prompt, 1.0),)
    switch = active[-1]
    step = chunk_index - switch.from_chunk
    if step >= switch.transition_chunks or switch.from_chunk == 0:
        return ((switch.prompt, 1.0),)
    weight = (step + 1) / (switch.transition_chunks + 1)
    before = prompt_mix(prompt, switches, switch.from_chunk - 1)
    mixed: dict[str, float] = {}
    for name, share in before:
        mixed[name] = mixed.get(name, 0.0) + share * (1 - weight)
    mixed[switch.prompt] = mixed.get(switch.prompt, 0.0) + weight
    if len(mixed) > MAX_BLEND_PROMPTS:
        # Prompts switched during transitions, again and again, would each stay in the blend
        # with ever smaller weights: the largest are kept (rescaled to sum to 1), so a chunk's
        # text costs a bounded blend and a live stream holds a bounded set of embeddings.
        largest = sorted(mixed.items(), key=lambda item: -item[1])[:MAX_BLEND_PROMPTS]
        total = sum(share for _, share in largest)
        return tuple((name, share / total) for name, share in largest)
    return tuple(mixed.items())


def mix_key(mix: PromptMix) -> str | PromptMix:
    """What a mix's text is cached by (the cross-attention cache): the prompt itself when there
    is one, else the mix (a tuple, so it never equals any prompt)."""
    return mix[0][0] if len(mix) == 1 else mix


def setting(default, help: str, flag: str | None = None, choices: tuple | None = None, env: str | None = None,
            aliases: tuple[str, ...] = ()):
    """A config field that carries its help text (and CLI flag, choices and environment
    variable): the one place the docs and the generated command line read it from
    (helios_serve/config.py: ``add_config_arguments``). ``aliases`` are more flags for the same
    field (a name kept from an earlier release, or another engine's name for the concept)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "env": env,
                                            "aliases": aliases})


@dataclass(frozen=True)
class RunnerConfig:
    """The model: which checkpoint, on which device, in which dtype, with which kernels."""

    # Torch-free, so the engine core can hold it without importing torch.

    model: str = setting("helios-tiny", "helios-tiny, helios-base|mid|distilled, helios-distilled-random, a "
                                        "Hugging Face repo id (downloaded when the cache lacks it) or a "
                                        "diffusers-format checkpoint directory")
    download_dir: str | None = setting(
        None, "the Hugging Face cache a repo id or alias is found in, and downloaded to when missing (default: "
              "$HF_HUB_CACHE, else $HF_HOME/hub)")
    revision: str | None = setting(None, "branch, tag or commit of a Hugging Face repo id or alias (default: main)")
    device: str | None = setting(None, "torch device (default: cuda when available, else cpu)")
    dtype: str | None = setting(None, "transformer and text-encoder dtype (default: bfloat16 on CUDA, float32 on "
                                      "CPU)", choices=("float32", "bfloat16", "float16"))
    text_cache_size: int = setting(64, "prompt embeddings kept for reuse (an LRU cache)")
    text_kv_cache_mb: int = setting(4096, "cross-attention keys and values kept per prompt, in MiB (about 420 "
                                          "per prompt for the 14B model; 0 turns the cache off)")
    kernels: str | None = setting(None, "elementwise kernels of the transformer (default: triton on CUDA when "
                                        "installed, else native)", choices=("triton", "native"))
    attention_backend: str = setting(
        "auto", "attention kernel: auto picks cuDNN attention on Hopper when its cuDNN is 9.16 or newer, else "
                "FlashAttention 3 when installed, else FlashAttention 2 on CUDA, PyTorch's dispatch elsewhere",
        choices=("auto", "sdpa", "flash", "cudnn", "fa3"))
    vae_dtype: str = setting("float32", "dtype of the VAE decode (the encode of image and video inputs is always "
                                        "float32)", choices=("float32", "bfloat16"))

    vae_device: str | None = setting(
        None, "torch device of the VAE and the text encoder, e.g. cuda:1: chunk decodes then run beside the "
              "transformer's forwards instead of taking turns with them on its GPU (default: the model's device)")

    def resolved_device(self):
        import torch

        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def resolved_vae_device(self):
        import torch

        return torch.device(self.vae_device) if self.vae_device else self.resolved_device()

    def resolved_dtype(self):
        import torch

        if self.dtype:
            return getattr(torch, self.dtype)
        return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    negative_prompt: str
    num_frames: int
    height: int
    width: int
    seed: int
    guidance_scale: float
    stage_steps: tuple[int, ...]
    """Denoising steps per stage: one entry for single-stage models, one per pyramid stage."""
    use_cfg_zero_star: bool = False
    use_zero_init: bool = True
    zero_steps: int = 1
    amplify_first_chunk: bool = False
    skip_first_chunk: bool = False
    image: Any = None
    """Image-to-video: PIL image, uint8 array [H, W, 3] or tensor; resized to height x width."""
    video: Any = None
    """Video-to-video: uint8 array [T, H, W, 3], list of PIL images or tensor."""
    video_skipped_frames: int = 0
    """Frames of the input video after its first that were never decoded (only the last windows
    reach the history); their windows' random draws are still made, in the reference's order."""
    add_noise_to_image_latents: bool = True
    add_noise_to_video_latents: bool = True
    image_noise_sigma: tuple[float, float] = (0.111, 0.135)
    video_noise_sigma: tuple[float, float] = (0.111, 0.135)
    decoder: str = "vae"
    """'vae' (the checkpoint's Wan VAE) or 'preview' (fast linear preview)."""
    resumable: bool = False
    """Hand out a ResumeSnapshot with every decoded chunk (for durable jobs)."""
    resume_path: str | None = None
    """Continue from the ResumeSnapshot saved at this path instead of starting afresh."""
    start_chunk: int = 0
    """Chunks already done when the request starts (the snapshot's ``chunks_done``)."""
    prompt_switches: tuple[PromptSwitch, ...] = ()
    """Later prompts of the video, ordered by chunk (``prompt`` holds from chunk 0)."""
    seed_from_chunk: int = 0
    """The chunk at which the generator is seeded with ``seed``: 0 for a new video; an extension
    with a seed of its own reseeds at its first chunk (otherwise it continues the original's
    random stream, exactly as one longer video would)."""

    @property
    def num_chunks(self) -> int:
        return max(1, math.ceil(self.num_frames / FRAMES_PER_CHUNK))

    def prompt_mix(self, chunk_index: int) -> PromptMix:
        return prompt_mix(self.prompt, self.prompt_switches, chunk_index)

    @property
    def prompts(self) -> tuple[str, ...]:
        """Every prompt of the video's schedule (the negative prompt aside)."""
        return tuple(dict.fromkeys([self.prompt, *(s.prompt for s in self.prompt_switches)]))

    def prompts_from(self, chunk_index: int) -> tuple[str, ...]:
        """The prompts chunks from ``chunk_index`` on are conditioned on: what a running request
        keeps encoded (a live stream whose prompt changes for hours holds only these)."""
        settled = max((s.from_chunk + s.transition_chunks for s in self.prompt_switches), default=0)
        used: dict[str, None] = {}
        for chunk in range(chunk_index, max(chunk_index, settled) + 1):
            used.update(dict.fromkeys(name for name, _ in self.prompt_mix(chunk)))
        return tuple(used)

    def with_prompt_from(self, from_chunk: int, prompt: str, transition_chunks: int = 0) -> "RequestSpec":
        """This spec with ``prompt`` taking over at ``from_chunk``; switches planned from then on are dropped."""
        kept = tuple(s for s in self.prompt_switches if s.from_chunk < from_chunk)
        return replace(self, prompt_switches=(*kept, PromptSwitch(from_chunk, prompt, transition_chunks)))

    @property
    def use_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def steps_in_chunk(self, chunk_index: int) -> tuple[int, ...]:
        """The first chunk of a distilled model may run twice the steps (amplification)."""
        if self.amplify_first_chunk and chunk_index == 0:
            return tuple(2 * n for n in self.stage_steps)
        return self.stage_steps

    @property
    def num_forwards(self) -> int:
        """Denoising forwards of the chunks still to make (a CFG pair counts once)."""
        return sum(sum(self.steps_in_chunk(c)) for c in range(self.start_chunk, self.num_chunks))

    def frames_in_chunk(self, chunk_index: int) -> int:
        return chunk_frame_counts(self.num_frames)[chunk_index]

    @property
    def output_frames(self) -> int:
        return sum(chunk_frame_counts(self.num_frames))


# -- the scheduler <-> runner contract ---------------------------------------------------------
# The scheduler decides, the runner executes. Between them pass only ids, the exact unit of
# each (UnitPosition) and the new requests' specs (sent once); the runner keeps every tensor,
# keyed by request id.


@dataclass(frozen=True)
class UnitPosition:
    """Exactly which unit of its request a planned unit is: chunk, pyramid stage, denoising step.

    begin_chunk (c, 0, 0); a denoising step (c, s, t), step t of stage s; next_stage (c, s, 0),
    entering stage s; decode (c, s, n), after the n steps of the last stage s.
    """

    chunk: int
    stage: int
    step: int


@dataclass
class StepPlan:
    """The units of work of one engine step. Each request appears at most once."""

    encode: list[tuple[str, RequestSpec]] = field(default_factory=list)
    """New requests: encode the prompts, fill the history (the spec is sent only here)."""
    begin_chunk: list[str] = field(default_factory=list)
    """Requests starting their next chunk: fresh noise, history split, first stage schedule."""
    next_stage: list[str] = field(default_factory=list)
    """Requests entering their next pyramid stage: upsample and block-noise re-noise."""
    denoise: list[str] = field(default_factory=list)
    """One denoising step for each, all rows (with CFG, two per request) in ONE forward."""
    decode: list[str] = field(default_factory=list)
    """Requests whose chunk is denoised: record it in the history, decode it, hand it out."""
    free: list[str] = field(default_factory=list)
    """Cancelled or timed-out requests: drop their device state."""
    prompt_switches: dict[str, RequestSpec] = field(default_factory=dict)
    """Requests whose prompt schedule changed while they run: the spec with the new schedule
    (applied after this step's encodes, before its chunk begins; it only affects chunks not begun)."""
    positions: dict[str, UnitPosition] = field(default_factory=dict)
    """For each request of begin_chunk, next_stage, denoise and decode: the unit the scheduler
    means. The scheduler owns every request's progress; the runner checks that its own state is
    at that unit and fails the request if not (a disagreement is a bug, never silently skipped)."""

    @property
    def is_empty(self) -> bool:
        return not (self.encode or self.begin_chunk or self.next_stage or self.denoise or self.decode or self.free
                    or self.prompt_switches)

    def request_ids(self) -> list[str]:
        return [rid for rid, _ in self.encode] + self.begin_chunk + self.next_stage + self.denoise + self.decode


@dataclass
class DecodedChunk:
    request_id: str
    chunk_index: int
    frames: Any
    """uint8 numpy array [T, H, W, 3]."""
    resume_state: Any = None
    """A model_executor.resume.ResumeSnapshot (CPU tensors) when the request is resumable."""
    cut_frames: Any = None
    """Of a trimmed last chunk: the decoded frames cut off its end (uint8 [33 - T, H, W, 3]), which a
    longer video has, so a job can keep its untrimmed chunk for extensions; None if nothing was cut."""


@dataclass
class StepResult:
    """What the runner reports back. Requests not named in ``failed`` completed their unit."""

    chunks: list[DecodedChunk] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """request id -> error message; the runner has already dropped their state."""
    model_seconds: float = 0.0
    """Wall time spent inside model work (forwards, encoders, decoders, samplers)."""
    num_rows: int = 0
    """Rows in this step's transformer forward (requests, doubled with CFG)."""
    model_flops: int = 0
    """FLOPs of that forward by the cost model (matmuls and attention, as FlopCounterMode counts)."""
