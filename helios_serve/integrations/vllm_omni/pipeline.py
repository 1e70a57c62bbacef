"""Our Helios executor behind vLLM-Omni's diffusion pipeline interface.

vLLM-Omni drives a pipeline in one of two modes:
- request mode: ``forward(batch)`` generates whole videos;
- step mode (``--step-execution``, with ``--max-num-seqs N`` for continuous batching): its
  runner calls ``prepare_encode`` once per request, then for every engine step
  ``denoise_step`` over the running requests, ``step_scheduler`` per request, and
  ``post_decode`` at the end of each chunk (with ``--diffusion-streaming-output``) or of the
  request.
  With streamed chunks it also calls our ``SupportsInteractionApply`` hooks at every chunk
  boundary, so a realtime ``session.interaction`` changes the prompt from the next chunk on.

Both modes run on our ModelRunner's per-request units (text encoding, chunk start, batched
forward, sampler step, stage transition, chunk decode). Unlike vLLM-Omni's built-in Helios,
one step batches requests at *different* timesteps and pyramid stages: the transformer takes
a per-sample timestep, and requests whose latents differ in size (different stages) get one
forward per size.

The runner gathers every request's ``state.latents`` into one tensor by rows, so each
request's latents are kept there flattened and zero-padded to the size of a full-resolution
chunk (one row per request); requests of one batch share height and width (vLLM-Omni's batch
key), so the rows line up whatever stage each request is in. ``noise_pred`` holds the guided
velocities the same way. Everything else of a request (history, sampler, generator) lives in
``state.extra``, so it is dropped with the state when vLLM-Omni finishes or aborts the request.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from vllm_omni.diffusion.data import DiffusionOutput
from vllm_omni.diffusion.distributed.utils import get_local_device
from vllm_omni.diffusion.interaction.mixin import InteractionMixin
from vllm_omni.diffusion.interaction.types import ChunkMediaSpec
from vllm_omni.diffusion.worker.input_batch import InputBatch
from vllm_omni.diffusion.worker.utils import StepRequestState
from vllm_omni.errors import OmniClientError

from ...model_executor.checkpoint import read_variant, resolve_model
from ...model_executor.model_runner import ModelRunner, RunnerConfig
from ...model_executor.step_io import FRAMES_PER_CHUNK, LATENT_CHANNELS, LATENT_FRAMES_PER_CHUNK, RequestSpec
from ..request_fields import request_spec

logger = logging.getLogger(__name__)

HELIOS = "helios_serve.state"
"""Key of our RequestState in ``StepRequestState.extra``."""
FAILURE = "helios_serve.failure"
BATCH_STATS = "helios_serve.batch"
"""The largest forward a request shared, and whether its batch mates were at other timesteps."""
DONE_FRAMES = "helios_serve.frames"
"""Decoded chunks kept for the final output when chunks are not streamed."""
PROMPT_TEXT = "helios_serve.prompt_text"
"""(embeddings, cache key) of the text vLLM-Omni's prompt interaction last set; the key is None
until an interaction changes the request's text."""
_interaction_texts = itertools.count()
"""Numbers the texts of prompt interactions: their cross-attention cache keys never repeat."""


def request_fields(prompt: Any, sampling: Any) -> tuple[str, dict[str, Any]]:
    """The prompt and Helios fields of a vLLM-Omni request (see README: vLLM-Omni fields)."""
    if isinstance(prompt, dict):
        text = prompt.get("prompt")
        media = prompt.get("multi_modal_data") or {}
        fields = {"negative_prompt": prompt.get("negative_prompt"), "image": media.get("image"), "video": media.get("video")}
    else:
        text, fields = prompt, {}
    fields.update(dict(getattr(sampling, "extra_args", None) or {}))
    for name in ("num_frames", "height", "width", "seed", "num_inference_steps"):
        if getattr(sampling, name, None) is not None:
            fields[name] = getattr(sampling, name)
    if getattr(sampling, "guidance_scale_provided", False):
        fields["guidance_scale"] = sampling.guidance_scale
    return text, fields


def get_pre_process_func(od_config):
    """Runs before a request is queued: rejects bad requests (HTTP 400), fixes the random
    seed and the steps, and keys batches by size."""
    variant = read_variant(Path(resolve_model(od_config.model)))

    def pre_process(request):
        sampling = request.sampling_params
        text, fields = request_fields(request.prompt, sampling)
        try:
            spec = request_spec(text, fields, variant, has_vae=True)
        except ValueError as exc:
            raise OmniClientError(str(exc)) from None
        sampling.seed = spec.seed
        # The steps per stage are pinned here because num_inference_steps is taken over for
        # vLLM-Omni's step scheduler, which counts a request's denoising forwards in it.
        sampling.extra_args = {**(sampling.extra_args or {}), "pyramid_num_inference_steps_list": list(spec.stage_steps)}
        sampling.num_inference_steps = spec.num_forwards
        # The packed latent rows (see the module docstring) need equal sizes in a batch.
        request.batch_compatibility_key = ("helios-serve", spec.height, spec.width)
        return request

    return pre_process


def get_post_process_func(od_config):
    """Our outputs are already uint8 frames [1, T, H, W, 3]; hand them on exactly."""

    def post_process(video: torch.Tensor, **kwargs) -> np.ndarray:
        return video.cpu().numpy()

    return post_process


class HeliosServePipeline(InteractionMixin, nn.Module):
    supports_step_execution: ClassVar[bool] = True
    _dit_modules: ClassVar[list[str]] = ["transformer"]
    _encoder_modules: ClassVar[list[str]] = ["text_encoder"]
    _vae_modules: ClassVar[list[str]] = ["vae"]

    def __init__(self, *, od_config, prefix: str = ""):
        super().__init__()
        self.od_config = od_config
        dtype = str(od_config.dtype).removeprefix("torch.") if od_config.dtype is not None else None
        # vLLM-Omni builds pipelines under its dtype as torch's default; our executor gives
        # every tensor its dtype explicitly and keeps fp32 where the reference does.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            self.runner = ModelRunner(RunnerConfig(model=od_config.model, device=str(get_local_device()), dtype=dtype))
        finally:
            torch.set_default_dtype(previous)
        # Registered as submodules so vLLM-Omni's offloading and device moves find them.
        modules = self.runner.modules()
        self.transformer, self.text_encoder, self.vae = modules["transformer"], modules["text_encoder"], modules["vae"]
        self.weights_sources = ()  # our loader read the checkpoint above (with its own checks)

    @property
    def device(self) -> torch.device:
        return self.runner.device

    def load_weights(self, weights) -> set[str]:
        for _ in weights:  # no sources are declared, so nothing arrives here
            pass
        return {name for name, _ in self.named_parameters()}

    # -- vLLM-Omni step contract ---------------------------------------------------------------
    # Our side of a request is driven through the runner's public calls only: start, then per
    # step guided_velocities (batched over the running requests) and advance. vLLM-Omni's own
    # counters (chunk, step in chunk, timesteps) are kept in step with the runner's state here.
    def prepare_encode(self, state: StepRequestState, **kwargs: Any) -> StepRequestState:
        text, fields = request_fields(state.prompt, state.sampling)
        try:
            spec = request_spec(text, fields, self.runner.variant, has_vae=self.runner.vae is not None)
            helios = self.runner.start(spec)
        except ValueError as exc:
            raise OmniClientError(str(exc)) from None
        logger.info(
            "request %s: %dx%d, %d frames, seed %d, steps %s, guidance %s",
            state.request_id, spec.width, spec.height, spec.num_frames, spec.seed, spec.stage_steps, spec.guidance_scale,
        )
        state.extra[HELIOS] = helios
        state.extra[DONE_FRAMES] = []
        state.extra[BATCH_STATS] = {"largest": 0, "mixed_timesteps": False}
        # The text of the chunk being made, for vLLM-Omni's prompt interaction handler (it
        # blends from here to a new prompt's embeddings; see prepare_next_chunk).
        state.prompt_embeds = helios.text
        state.extra[PROMPT_TEXT] = (helios.text, None)
        state.total_chunks = spec.num_chunks
        state.step_index = 0
        # One timestep per forward of the whole request, filled in as each stage starts.
        state.timesteps = torch.zeros(spec.num_forwards, dtype=torch.float32)
        self._enter_chunk(state)
        return state

    def denoise_step(self, input_batch: InputBatch, *, states=None, **kwargs: Any) -> torch.Tensor:
        """One forward per latent size over all rows; returns the guided velocities, packed."""
        states = list(states if states is not None else input_batch.states)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, (state, row) in enumerate(zip(states, input_batch.latents)):
            helios = state.extra[HELIOS]
            helios.latents = _unpack(row, helios.latents.shape)
            groups[tuple(helios.latents.shape)].append(index)
        velocities: list[torch.Tensor | None] = [None] * len(states)
        for indices in groups.values():
            self._forward_group([states[i] for i in indices], indices, velocities)
        size = input_batch.latents.shape[1]
        return torch.cat([_pack(v, size) if v is not None else input_batch.latents.new_zeros(1, size) for v in velocities])

    def _forward_group(self, states: list[StepRequestState], indices: list[int], velocities: list) -> None:
        """One transformer call; if it fails, retry one by one so only the culprit fails
        (its step_scheduler raises the error)."""
        helios = [state.extra[HELIOS] for state in states]
        try:
            guided = self.runner.guided_velocities(helios)
        except Exception as exc:  # noqa: BLE001 - any failure of one request is reported, not raised
            if len(states) == 1:
                states[0].extra[FAILURE] = exc
                return
            for state, index in zip(states, indices):
                self._forward_group([state], [index], velocities)
            return
        timesteps = {self.runner.timestep(h) for h in helios}
        for state, index, velocity in zip(states, indices, guided):
            velocities[index] = velocity
            batch = state.extra[BATCH_STATS]
            batch["largest"] = max(batch["largest"], len(states))
            batch["mixed_timesteps"] |= len(timesteps) > 1

    def step_scheduler(self, state: StepRequestState, noise_pred: torch.Tensor, **kwargs: Any) -> None:
        failure = state.extra.pop(FAILURE, None)
        if failure is not None:
            raise failure
        helios = state.extra[HELIOS]
        stage = helios.stage_index
        chunk = self.runner.advance(state.request_id, helios, _unpack(noise_pred[0], helios.latents.shape))
        state.step_index += 1
        state.step_in_chunk += 1
        if chunk is not None:
            state.extra[DONE_FRAMES].append(chunk.frames)
            # Streamed chunks enter the next chunk in post_decode, which vLLM-Omni calls only
            # while this chunk still reads as denoised.
            if not self.od_config.streaming_output and not helios.is_finished:
                self._enter_chunk(state)
        elif helios.stage_index != stage:
            self._record_stage_timesteps(state)
        if not helios.is_finished:
            state.latents = _pack(helios.latents, self._row_size(helios.spec))

    def post_decode(self, state: StepRequestState, **kwargs: Any) -> DiffusionOutput:
        chunk_index = state.chunk_index
        helios = state.extra[HELIOS]
        frames, state.extra[DONE_FRAMES] = state.extra[DONE_FRAMES], []
        if self.od_config.streaming_output or helios.is_finished:
            self._enter_chunk(state)
        video = torch.from_numpy(np.concatenate(frames))[None]
        finished = state.request_denoise_completed
        if finished:
            batch = state.extra[BATCH_STATS]
            logger.info(
                "request %s finished: %d chunks; shared forwards with up to %d requests%s",
                state.request_id, state.total_chunks, batch["largest"],
                " at different timesteps" if batch["mixed_timesteps"] else "",
            )
        return DiffusionOutput(output=video, chunk_index=chunk_index, total_chunks=state.total_chunks, finished=finished)

    # -- vLLM-Omni prompt interactions (WS session.interaction) ---------------------------------
    # With --diffusion-streaming-output, after each chunk's post_decode vLLM-Omni's runner calls
    # apply_interaction_at_chunk_boundary (InteractionMixin: its PromptInteractionHandler sets
    # state.prompt_embeds to the new prompt's embeddings, or a blend over transition_chunks) and
    # then prepare_next_chunk, before the next chunk's first denoising step.
    def encode_prompt(self, prompt: str, negative_prompt: str | None = None, do_classifier_free_guidance: bool = False,
                      num_videos_per_prompt: int = 1, max_sequence_length: int | None = None, device=None,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt embeddings [1, L, text_dim], negative ones or None): our text encoder's, as
        vLLM-Omni's prompt handler asks for them (one video per request; fixed length L)."""
        embeds = self.runner.encode_prompt(prompt).to(device or self.device, dtype or self.transformer.dtype)
        negative = None
        if do_classifier_free_guidance:
            negative = self.runner.encode_prompt(negative_prompt or "").to(embeds.device, embeds.dtype)
        return embeds, negative

    def peek_chunk_media(self, state: StepRequestState) -> ChunkMediaSpec:
        helios = state.extra[HELIOS]
        chunk = min(helios.chunk_index, helios.spec.num_chunks - 1)
        fps = getattr(state.sampling, "fps", None) or 24
        return ChunkMediaSpec(num_media_frames=helios.spec.frames_in_chunk(chunk) or FRAMES_PER_CHUNK, fps=float(fps),
                              num_latent_frames=LATENT_FRAMES_PER_CHUNK)

    def prepare_next_chunk(self, state: StepRequestState) -> None:
        """Conditions the chunk just begun on ``state.prompt_embeds`` once an interaction changed
        it. The runner fixed the chunk's text from the request's prompt when it began the chunk
        (in advance), and no forward has read it yet, so it is replaced here; every later chunk
        begins from the prompt again, so the interaction's text is set at every boundary."""
        helios = state.extra[HELIOS]
        embeds = state.prompt_embeds
        if helios.is_finished or embeds is None:
            return
        applied = state.extra[PROMPT_TEXT]
        if applied[0] is not embeds:
            # A new text: a cache key that no prompt (a str) or prompt mix (of str, float pairs)
            # can equal, and that is never reused, so no other text's cached K/V is ever taken.
            key = ("vllm-omni interaction", next(_interaction_texts))
            applied = state.extra[PROMPT_TEXT] = (embeds, key)
        if applied[1] is None:
            return  # no interaction yet: the chunk keeps the request's own text
        helios.text = embeds[:1].to(self.device, self.transformer.dtype)
        helios.text_key = applied[1]

    # -- request mode --------------------------------------------------------------------------
    def forward(self, req, **kwargs: Any) -> DiffusionOutput:
        """A whole video per request, the requests' steps batched as in step mode."""
        states = [StepRequestState(r.request_id, r.sampling_params, r.prompt) for r in req.requests]
        if len(states) != 1:
            raise ValueError(f"{type(self).__name__}.forward takes one request at a time, got {len(states)}")
        state = self.prepare_encode(states[0])
        while not state.denoise_completed:
            noise_pred = self.denoise_step(InputBatch.make_batch([state]), states=[state])
            self.step_scheduler(state, noise_pred)
        return self.post_decode(state)

    # -- vLLM-Omni's counters --------------------------------------------------------------------
    def _enter_chunk(self, state: StepRequestState) -> None:
        """vLLM-Omni's view of the chunk the runner's state is now at (past the last when finished)."""
        helios = state.extra[HELIOS]
        state.chunk_index = helios.chunk_index
        if helios.is_finished:
            return
        state.step_in_chunk = 0
        state.chunk_num_steps = sum(helios.spec.steps_in_chunk(helios.chunk_index))
        self._record_stage_timesteps(state)
        state.latents = _pack(helios.latents, self._row_size(helios.spec))

    def _record_stage_timesteps(self, state: StepRequestState) -> None:
        timesteps = self.runner.stage_timesteps(state.extra[HELIOS])
        state.timesteps[state.step_index : state.step_index + len(timesteps)] = timesteps

    @staticmethod
    def _row_size(spec: RequestSpec) -> int:
        """Numbers in a full-resolution chunk of latents: the packed row length."""
        return LATENT_CHANNELS * LATENT_FRAMES_PER_CHUNK * (spec.height // 8) * (spec.width // 8)


def _pack(latents: torch.Tensor, size: int) -> torch.Tensor:
    flat = latents.reshape(1, -1)
    return torch.nn.functional.pad(flat, (0, size - flat.shape[1]))


def _unpack(row: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # A copy: the runner reuses the batch tensor, and samplers keep earlier latents.
    return row.reshape(-1)[: shape.numel()].reshape(shape).clone()
