"""The ModelRunner owns the model, the tensors and every request's device state.

It executes units of work for request ids: set a request up (text encoding, conditioning),
begin a chunk, run one denoising step for a *batch* of requests in one transformer forward,
move a request to its next pyramid stage, and finish and decode a chunk. It decides
nothing: which requests run together is the caller's business.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from .checkpoint import RANDOM_MODEL, TINY_MODELS, ModelVariant, read_variant, resolve_model
from .conditioning import initial_history
from .cost_model import forward_token_counts, text_context_flops, transformer_flops
from .device import to_device, to_host
from .models.helios_transformer import HeliosTransformer
from .decode_worker import DecodeWorker
from .layers.attention_backends import Capabilities, choose_backend
from .layers.rotary import RotaryTable
from .models.vae import PreviewDecoder, WanVAE
from .text_kv_cache import TextKVCache
from .sequence_parallel import SequenceParallel
from .request_state import HISTORY_INDICES, NOISY_INDICES, ChunkProcedure, RequestState
from .resume import ResumeSnapshot, load_snapshot
from .step_io import DecodedChunk, RequestSpec, RunnerConfig, StepPlan, StepResult

logger = logging.getLogger(__name__)


MAX_ROTARY_TABLES = 16
"""RoPE tables kept (each 5.6 MB at 14B, 384x640 stage 2): the three pyramid stages of a few sizes."""


class RotaryGeometry(NamedTuple):
    """What a forward's RoPE table depends on with the runner's fixed frame indices: Python ints
    read from tensor shapes (never a device value, so the key costs no host-device sync)."""

    noisy: tuple[int, int, int]
    """T, H, W of the noisy latents."""
    history: tuple[tuple[str, tuple[int, int, int]], ...]
    """(term, (t, H, W)) of each history term."""


def rotary_geometry(state: RequestState) -> RotaryGeometry:
    history = tuple((term, tuple(state.history_terms[term].shape[2:])) for term in HISTORY_INDICES)
    return RotaryGeometry(tuple(state.latents.shape[2:]), history)


class ProgressMismatch(RuntimeError):
    """The scheduler planned a unit the request's state is not at: a bug, failed loudly."""


__all__ = ["ModelRunner", "ProgressMismatch", "RunnerConfig"]


class ModelRunner:
    def __init__(self, config: RunnerConfig, decode_in_background: bool = False,
                 sequence_parallel: SequenceParallel | None = None):
        """``decode_in_background``: chunk decodes run behind the next chunk's denoising
        (decode_worker.py); a chunk then comes out of a later step than its decode unit.
        ``sequence_parallel``: this runner is one rank of a group that splits every forward's
        tokens; every rank executes the same plans, and only rank 0 decodes chunks."""
        self.config = config
        self.device = config.resolved_device()
        self.aux_device = config.resolved_vae_device()
        """Where the text encoder and the VAE run (the transformer's device unless told)."""
        self.dtype = config.resolved_dtype()
        self.attention_backend = choose_backend(config.attention_backend, Capabilities.probe(self.device), self.dtype)
        logger.info("attention backend: %s (asked for %s)", self.attention_backend, config.attention_backend)
        self.variant, self.transformer, self.text_encoder, self.vae = self._load(config)
        self.transformer.use_sequence_parallel(sequence_parallel)
        self.decodes_chunks = sequence_parallel is None or sequence_parallel.communicator.rank == 0
        preview = PreviewDecoder.fit(self.vae) if self.vae is not None else self._tiny_preview()
        self.preview = preview.to(self.device)
        self.text_kv = TextKVCache(self.transformer, config.text_kv_cache_mb * 2**20) if config.text_kv_cache_mb else None
        self.procedure = ChunkProcedure(self.variant, self.transformer.config.patch_size, self.dtype, self.device)
        self.requests: dict[str, RequestState] = {}
        self.decodes = DecodeWorker(self.device, decode_in_background)
        # RoPE frame indices are the same for every forward: uploaded once, not once per step.
        self._indices = {"hidden_states": to_device(NOISY_INDICES, self.device)}
        self._indices.update({f"latents_history_{t}": to_device(i, self.device) for t, i in HISTORY_INDICES.items()})
        # With the indices fixed, a forward's RoPE table depends on its token geometry alone.
        self._rotary_tables: dict[RotaryGeometry, RotaryTable] = {}

    def _load(self, config: RunnerConfig) -> tuple[ModelVariant, HeliosTransformer, object, WanVAE | None]:
        location = resolve_model(config.model, config.download_dir, config.revision)
        if location in TINY_MODELS:
            from .models.tiny import tiny_text_encoder, tiny_variant

            transformer = HeliosTransformer.from_preset(
                "helios-tiny", dtype=self.dtype, device=self.device, kernels=config.kernels,
                attention=self.attention_backend,
            )
            text_encoder = tiny_text_encoder(self.aux_device, self.dtype, config.text_cache_size)
            return tiny_variant(location), transformer, text_encoder, None
        if location == RANDOM_MODEL:
            from .models.random_model import load_random_distilled

            return load_random_distilled(self.device, self.dtype, config.kernels, config.text_cache_size,
                                         getattr(torch, config.vae_dtype), self.attention_backend, self.aux_device)
        from .models.text_encoder import TextEncoder

        root = Path(location)
        variant = read_variant(root)
        transformer = HeliosTransformer.from_pretrained(
            root / "transformer", dtype=self.dtype, device=self.device, kernels=config.kernels,
            attention=self.attention_backend,
        )
        text_encoder = TextEncoder.from_pretrained(root, self.aux_device, self.dtype, cache_size=config.text_cache_size)
        # The reference VAE runs in fp32 (spec §4.6); the decode may be bf16 (config.vae_dtype).
        vae = WanVAE.from_pretrained(root / "vae", self.aux_device, getattr(torch, config.vae_dtype))
        logger.info("loaded %s (%s variant) from %s", config.model, variant.name, root)
        return variant, transformer, text_encoder, vae

    @staticmethod
    def _tiny_preview() -> PreviewDecoder:
        from .models.tiny import tiny_preview_decoder

        return tiny_preview_decoder()

    # -- request lifecycle ---------------------------------------------------------------
    def add_request(self, request_id: str, spec: RequestSpec) -> None:
        """Encode the prompts and fill the history; the request is then ready for its first chunk."""
        self.requests[request_id] = self.create_state(spec)

    def create_state(self, spec: RequestSpec) -> RequestState:
        """A new request's state, not kept by the runner (for fronts that own their states)."""
        if (spec.image is not None or spec.video is not None) and self.vae is None:
            raise ValueError(f"{self.config.model} has no VAE to encode an image or video input")
        generator = torch.Generator(device="cpu").manual_seed(spec.seed)
        embeddings = {prompt: self.encode_prompt(prompt) for prompt in spec.prompts_from(spec.start_chunk)}
        negative = self.text_encoder.encode(spec.negative_prompt).to(self.device, self.dtype) if spec.use_cfg else None
        if spec.resume_path:
            snapshot = load_snapshot(spec.resume_path)
            if snapshot.chunks_done != spec.start_chunk:
                raise ValueError(f"snapshot has {snapshot.chunks_done} chunks done, expected {spec.start_chunk}")
            generator.set_state(snapshot.rng_state)
            if spec.seed_from_chunk == spec.start_chunk:  # an extension with a seed of its own
                generator.manual_seed(spec.seed)
            history = to_device(snapshot.history, self.device)
            anchor = to_device(snapshot.anchor, self.device) if snapshot.anchor is not None else None
        else:
            history, anchor = initial_history(spec, self.vae, generator, self.device)
        return RequestState(spec, generator, embeddings, negative, history, anchor, chunk_index=spec.start_chunk)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """[1, L, text_dim] embeddings of a prompt on the device (the text encoder caches them,
        so a front may call this ahead, off the engine thread, to have a new prompt ready)."""
        return self.text_encoder.encode(prompt).to(self.device, self.dtype)

    def switch_prompts(self, request_id: str, spec: RequestSpec) -> None:
        """The request's prompt schedule is now ``spec``'s (a prompt changed while it runs):
        its new prompts are encoded, and those no chunk to come uses are let go (chunks already
        begun keep their text)."""
        state = self.requests[request_id]
        state.spec = replace(state.spec, prompt_switches=spec.prompt_switches)
        needed = state.spec.prompts_from(state.chunk_index)
        kept = {prompt: state.prompt_embeddings.get(prompt) for prompt in needed}
        state.prompt_embeddings = {prompt: self.encode_prompt(prompt) if embeddings is None else embeddings
                                   for prompt, embeddings in kept.items()}

    def remove_request(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    def begin_chunk(self, request_id: str) -> None:
        self.procedure.begin_chunk(self.requests[request_id])

    def next_stage(self, request_id: str) -> None:
        self.procedure.next_stage(self.requests[request_id])

    def forward(self, states: list[RequestState]) -> list[list[torch.Tensor]]:
        """One transformer call for every row of these requests (their next forwards must share a
        token geometry); touches no request state. Returns each request's rows."""
        rows = [(state, text) for state in states for text in self.procedure.model_rows(state)]
        if self.text_kv is not None:
            prompts = [prompt for state in states for prompt in self.procedure.model_row_prompts(state)]
            text = {"text_context": self.text_kv.context(prompts, [text for _, text in rows])}
        else:
            text = {"encoder_hidden_states": torch.cat([text for _, text in rows])}
        velocity = self.transformer(
            hidden_states=torch.cat([s.latents.to(self.dtype) for s, _ in rows]),
            timestep=torch.stack([s.model_timesteps[s.step_index] for s, _ in rows]),
            **text,
            **self._history_inputs([s for s, _ in rows]),
            rotary=self._rotary_table(states[0]),
        )
        per_request, offset = [], 0
        for state in states:
            count = len(self.procedure.model_rows(state))
            per_request.append(list(velocity[offset : offset + count].split(1)))
            offset += count
        return per_request

    def forward_flops(self, state: RequestState) -> int:
        """FLOPs of this request's rows in its next forward (cost model: matmuls and attention)."""
        terms = state.history_terms
        tokens = forward_token_counts(
            self.transformer.config, tuple(state.latents.shape[-2:]), tuple(terms["short"].shape[-2:]),
            tuple(terms[term].shape[2] for term in ("long", "mid", "short")),
        )
        rows = self.procedure.model_rows(state)
        flops = transformer_flops(self.transformer.config, tokens, rows[0].shape[1])
        # With the text cache the text projection and keys/values are not recomputed per forward.
        cached = text_context_flops(self.transformer.config, rows[0].shape[1]) if self.text_kv is not None else 0
        return len(rows) * (flops["total"] - cached)

    def _rotary_table(self, state: RequestState) -> RotaryTable:
        """The RoPE table of the state's next forward (every request of a forward shares its
        geometry), made once per geometry: a pyramid stage repeats it for each of its steps and
        every later chunk of the same size."""
        geometry = rotary_geometry(state)
        table = self._rotary_tables.get(geometry)
        if table is None:
            if len(self._rotary_tables) >= MAX_ROTARY_TABLES:  # drop the oldest made (remade if asked for again)
                del self._rotary_tables[next(iter(self._rotary_tables))]
            history_sizes = {term: size for term, size in geometry.history}
            history_indices = {term: self._indices[f"latents_history_{term}"] for term in history_sizes}
            table = self.transformer.sequence_rotary_table(geometry.noisy, self._indices["hidden_states"],
                                                           history_sizes, history_indices, self.device)
            self._rotary_tables[geometry] = table
        return table

    def _history_inputs(self, states: list[RequestState]) -> dict[str, torch.Tensor]:
        inputs = {f"indices_{name}": indices for name, indices in self._indices.items()}
        for term in HISTORY_INDICES:
            inputs[f"latents_history_{term}"] = torch.cat([s.history_terms[term].to(self.dtype) for s in states])
        return inputs

    def finish_chunk(self, request_id: str, state: RequestState | None = None) -> DecodedChunk:
        """Close the chunk and decode it: uint8 frames [T, H, W, 3], the last chunk trimmed to 4n+1.

        ``state`` defaults to the runner's own state for the id; the runner drops its own states
        after their last chunk (a caller that owns its state keeps it).
        """
        decode, _ = self._close_chunk(request_id, state)
        return decode()

    def _close_chunk(self, request_id: str, state: RequestState | None = None):
        """Record the chunk in the history (the next chunk may begin at once). Returns its
        decode, a function that reads only what is captured here, and the device tensors it reads."""
        owned = state is None
        state = state or self.requests[request_id]
        chunk_index, nonfinite = state.chunk_index, state.nonfinite
        latents = self.procedure.finish_chunk(state)
        decoder = self.vae if (state.spec.decoder == "vae" and self.vae is not None) else self.preview
        num_frames = state.spec.frames_in_chunk(chunk_index)
        resume = None
        if state.spec.resumable:  # what the next chunk starts from, captured now
            resume = (state.chunk_index, state.history, state.anchor, state.generator.get_state())
        if state.is_finished and owned:
            self.remove_request(request_id)

        def decode() -> DecodedChunk:
            # The chunk's only reads from the device: the non-finite flag, the frames, the snapshot.
            if to_host(nonfinite):
                raise ValueError("the sampler produced non-finite latents")
            decoded = to_host(decoder.decode_frames(latents)).numpy()
            frames, cut = decoded[:num_frames], decoded[num_frames:]
            snapshot = None
            if resume is not None:
                done, history, anchor, rng = resume
                anchor = to_host(anchor).clone() if anchor is not None else None
                snapshot = ResumeSnapshot(done, to_host(history).clone(), anchor, rng)
            return DecodedChunk(request_id, chunk_index, frames, snapshot, cut if len(cut) else None)

        reads = tuple(t for t in (latents, nonfinite, *(resume[1:3] if resume else ())) if t is not None)
        return decode, reads

    # -- fronts that drive their requests themselves (the SGLang and vLLM-Omni plugins) --------
    # A request's state belongs to the caller; these four calls are all it needs, in this order:
    # start, then per denoising step guided_velocities (batched) and advance, until finished.
    def start(self, spec: RequestSpec) -> RequestState:
        """A new request's state at the first denoising step of its first chunk (not kept here)."""
        state = self.create_state(spec)
        self.procedure.begin_chunk(state)
        return state

    def guided_velocities(self, states: list[RequestState]) -> list[torch.Tensor]:
        """One transformer forward for these requests (equal token geometry): each one's guided velocity."""
        return [self.procedure.guide(state, rows) for state, rows in zip(states, self.forward(states))]

    def advance(self, request_id: str, state: RequestState, velocity: torch.Tensor) -> DecodedChunk | None:
        """One sampler step with the request's guided velocity, then whatever is due after it: the
        next pyramid stage, or the chunk's decode and the next chunk's begin. Returns the chunk
        when one was decoded."""
        self.procedure.sampler_step(state, velocity)
        if not state.stage_done:
            return None
        if state.stage_index + 1 < self.procedure.sampler.stages:
            self.procedure.next_stage(state)
            return None
        chunk = self.finish_chunk(request_id, state)
        if not state.is_finished:
            self.procedure.begin_chunk(state)
        return chunk

    def generate(self, request_id: str, spec: RequestSpec, on_step=None) -> Iterator[DecodedChunk]:
        """Every chunk of one request in order; ``on_step()`` after each denoising step."""
        state = self.start(spec)
        while not state.is_finished:
            chunk = self.advance(request_id, state, self.guided_velocities([state])[0])
            if on_step is not None:
                on_step()
            if chunk is not None:
                yield chunk

    def timestep(self, state: RequestState) -> float:
        """The transformer timestep of the request's next denoising step."""
        return self.procedure.model_timestep(state)

    def stage_timesteps(self, state: RequestState) -> torch.Tensor:
        """The transformer timesteps of the request's current stage, on the host."""
        return self.procedure.model_timesteps(state)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The model's torch modules by role (for engines that move or offload them)."""
        modules = {"transformer": self.transformer, "text_encoder": self.text_encoder.encoder}
        return modules | ({"vae": self.vae.vae} if self.vae is not None else {})

    # -- one engine step -------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        """Run a step's units. A failing unit fails only its own request (its state is dropped)."""
        started = time.perf_counter()
        result = StepResult()
        for request_id in plan.free:
            self.remove_request(request_id)
            self.decodes.drop(request_id)
        for request_id, spec in plan.encode:
            self._guarded(result, request_id, self.add_request, request_id, spec)
        for request_id, spec in plan.prompt_switches.items():
            if request_id in self.requests:
                self._guarded(result, request_id, self.switch_prompts, request_id, spec)
        for unit in ("begin_chunk", "next_stage", "denoise", "decode"):
            for request_id in getattr(plan, unit):
                self._guarded(result, request_id, self._check_position, plan, unit, request_id)
        for request_id in self._live(plan.begin_chunk):
            self._guarded(result, request_id, self.begin_chunk, request_id)
        for request_id in self._live(plan.next_stage):
            self._guarded(result, request_id, self.next_stage, request_id)
        denoise = self._live(plan.denoise)
        if denoise:
            live = [self.requests[r] for r in denoise]
            result.num_rows = sum(len(self.procedure.model_rows(state)) for state in live)
            result.model_flops = sum(self.forward_flops(state) for state in live)
            self._denoise_isolating_failures(denoise, result)
        for request_id in self._live(plan.decode):
            closed = self._guarded(result, request_id, self._close_chunk, request_id)
            if closed is not None and self.decodes_chunks:  # other ranks only move on to the next chunk
                self.decodes.submit(request_id, *closed)
        # A step with nothing else to do waits for a decode instead of spinning.
        for request_id, outcome in self.decodes.collect(wait=not plan.request_ids()):
            if isinstance(outcome, Exception):
                self._fail(result, request_id, outcome)
            else:
                result.chunks.append(outcome)
        result.model_seconds = time.perf_counter() - started
        return result

    @property
    def pending_decodes(self) -> int:
        """Chunk decodes still running behind the denoising."""
        return self.decodes.pending

    def _live(self, request_ids: list[str]) -> list[str]:
        """The ids whose state is still here (a failed request's state is already dropped)."""
        return [r for r in request_ids if r in self.requests]

    def _check_position(self, plan: StepPlan, unit: str, request_id: str) -> None:
        """Raise ProgressMismatch unless the request's state is at the unit the scheduler planned."""
        state = self.requests[request_id]
        planned, actual = plan.positions.get(request_id), state.position_for(unit)
        if actual is None or (planned is not None and planned != actual):
            raise ProgressMismatch(f"{unit} planned at {planned}, but the request's state is at chunk "
                                   f"{state.chunk_index}, stage {state.stage_index}, step {state.step_index}")

    def _guarded(self, result: StepResult, request_id: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of one request is reported, not raised
            self._fail(result, request_id, exc)
            return None

    def _fail(self, result: StepResult, request_id: str, exc: Exception) -> None:
        logger.warning("request %s failed: %s", request_id, exc, exc_info=not isinstance(exc, ValueError))
        result.failed[request_id] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        self.remove_request(request_id)
        self.decodes.drop(request_id)

    def _denoise_isolating_failures(self, request_ids: list[str], result: StepResult) -> None:
        states = {r: self.requests[r] for r in request_ids if r in self.requests}
        try:
            velocities = self.forward(list(states.values()))
        except Exception as exc:  # noqa: BLE001 - find the request that broke the batch, keep the others
            if len(states) == 1:
                self._fail(result, next(iter(states)), exc)
                return
            # On CPU (batch-invariant GEMMs) the one-by-one retry gives exactly the batched result;
            # on a GPU it agrees to rounding.
            for request_id in states:
                self._denoise_isolating_failures([request_id], result)
            return
        for (request_id, state), rows in zip(states.items(), velocities):
            self._guarded(result, request_id, self.procedure.apply_model_output, state, rows)
