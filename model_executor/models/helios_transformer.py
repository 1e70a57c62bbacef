"""The Helios diffusion transformer: one denoising forward of one chunk (spec §2).

The sequence is ``[long history | mid history | short history | noisy chunk]``. History is
tokenised at three compression rates, modulated with timestep 0 and kept out of text
cross-attention; only the noisy tokens come out of the head. Each sample of a batch may
carry its own timestep, history and text, so one forward serves many requests.

The model knows nothing about requests, samplers or schedules.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

from ..config import HeliosTransformerConfig
from ..layers.attention import CrossAttention, SelfAttention
from ..layers.attention_backends import attention_function
from ..layers.embeddings import TextProjection, TimeEmbedding
from ..layers.linear import Linear, gelu_tanh
from ..layers.norm import AffineLayerNorm, SegmentParams
from ..layers.ops import make_ops
from ..layers.patch_embed import PatchEmbed
from ..layers.rotary import RotaryTable, pad_replicate, rotary_table
from ..sequence_parallel import SequenceParallel, TokenShards

# Multiples of the noisy patch used by the short / mid / long history tokenisers.
HISTORY_TERM_SCALES = {"short": 1, "mid": 2, "long": 4}


class TokenTerm(NamedTuple):
    """One term's tokens; its RoPE table is a function of its shape alone (sequence_rotary_table)."""

    tokens: torch.Tensor  # [B, n, D]


class TextContext(NamedTuple):
    """What the blocks read of the text: each block's cross-attention keys and values,
    [B, L, heads, head_dim] each. A function of the prompt alone (see HeliosTransformer.text_context)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]

    @staticmethod
    def cat(contexts: list[TextContext]) -> TextContext:
        """The contexts of several rows as one batch, in order."""
        if len(contexts) == 1:
            return contexts[0]
        return TextContext([tuple(torch.cat(parts) for parts in zip(*pairs)) for pairs in zip(*(c.kv for c in contexts))])


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, batch_invariant: bool):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim, batch_invariant)
        self.fc2 = Linear(hidden_dim, dim, batch_invariant)
        self.batch_invariant = batch_invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x), self.batch_invariant))


class HeliosBlock(nn.Module):
    def __init__(self, config: HeliosTransformerConfig, batch_invariant: bool, ops):
        super().__init__()
        dim, heads, eps = config.inner_dim, config.num_attention_heads, config.eps
        self.eps = eps
        self.ops = ops
        self.guidance_cross_attn = config.guidance_cross_attn
        # shift, scale, gate of self-attention, then shift, scale, gate of the FFN
        # Parameters are filled by the loader or random_init; torch.empty keeps meta construction cheap.
        self.scale_shift_table = nn.Parameter(torch.empty(1, 6, dim))
        self.self_attn = SelfAttention(
            dim, heads, eps, config.is_amplify_history, config.history_scale_mode, batch_invariant, ops
        )
        self.norm2 = AffineLayerNorm(dim, eps, ops) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, heads, eps, batch_invariant)
        self.ffn = FeedForward(dim, config.ffn_dim, batch_invariant)

    def forward(
        self,
        h: torch.Tensor,
        text_kv: tuple[torch.Tensor, torch.Tensor],
        modulation: SegmentParams,
        rotary: RotaryTable,
        num_history: int,
        shards: TokenShards | None = None,
    ) -> torch.Tensor:
        # modulation: per segment [B|1, 6, D] fp32 (converted once per forward, not per block).
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ops.block_modulation(
            self.scale_shift_table + modulation.history, self.scale_shift_table + modulation.noisy, h.shape[0]
        )

        # 1. Self-attention over history and noisy tokens
        x = self.ops.modulated_layer_norm(h, shift1, scale1, num_history, self.eps)
        h = self.ops.gated_residual(h, self.self_attn(x, rotary, num_history, shards), gate1, num_history)

        # 2. Cross-attention to the text; only the noisy tokens when guidance_cross_attn. The
        # residual is added in place: h is this block's own fresh tensor, nothing else reads it.
        queries = h[:, num_history:] if self.guidance_cross_attn else h
        queries += self.cross_attn(self.norm2(queries), text_kv)

        # 3. Feed-forward over all tokens
        x = self.ops.modulated_layer_norm(h, shift2, scale2, num_history, self.eps)
        return self.ops.gated_residual(h, self.ffn(x), gate2, num_history)


class HeliosTransformer(nn.Module):
    def __init__(self, config: HeliosTransformerConfig, batch_invariant: bool = False, kernels: str = "native",
                 attention: str = "sdpa"):
        """``batch_invariant``: a sample's output is bitwise independent of its batch mates
        (per-sample GEMMs; see layers/linear.py). Loaders turn it on for CPU devices.
        ``kernels``: "native" (PyTorch) or "triton" (fused kernels) for the elementwise paths.
        ``attention``: the attention kernel, a resolved backend of layers/attention_backends.py."""
        super().__init__()
        self.config = config
        self.ops = make_ops(kernels)
        dim, patch, invariant = config.inner_dim, config.patch_size, batch_invariant
        self.patch_embedding = PatchEmbed(config.in_channels, dim, patch, invariant)
        self.history_patch = nn.ModuleDict(
            {term: PatchEmbed(config.in_channels, dim, k, invariant) for term, k in self.history_kernels().items()}
        )
        self.time_embedding = TimeEmbedding(config.freq_dim, dim, invariant)
        self.text_embedding = TextProjection(config.text_dim, dim, invariant)
        self.blocks = nn.ModuleList([HeliosBlock(config, invariant, self.ops) for _ in range(config.num_layers)])
        self.output_scale_shift_table = nn.Parameter(torch.empty(1, 2, dim))
        self.proj_out = Linear(dim, config.out_channels * math.prod(patch), invariant)
        self.use_attention(attention)
        self.sequence_parallel: SequenceParallel | None = None

    def use_sequence_parallel(self, group: SequenceParallel | None) -> None:
        """Split every forward's tokens over ``group``'s ranks (None: one rank holds them all). Set
        by the runner from config; every rank holds the whole model and runs the same forwards."""
        if group is not None and self.config.num_attention_heads % group.size:
            raise ValueError(f"sequence_parallel_size {group.size} must divide the model's "
                             f"{self.config.num_attention_heads} attention heads")
        self.sequence_parallel = group

    def use_attention(self, backend: str) -> None:
        """Run every attention (self and cross) with ``backend``'s kernel (a resolved backend of
        layers/attention_backends.py). Set at construction from config; gpu_check compares them."""
        attend = attention_function(backend)
        for module in self.modules():
            if isinstance(module, (SelfAttention, CrossAttention)):
                module.attend = attend
        self.attention_backend = backend

    # Loading (see model_executor/loader.py) consults these.
    fp32_parameter_patterns = ("time_embedding.linear_", "scale_shift_table", "norm2.", "history_key_scale")

    @classmethod
    def from_pretrained(
        cls, path, dtype: torch.dtype = torch.bfloat16, device="cpu", batch_invariant: bool | None = None,
        kernels: str | None = None, attention: str = "sdpa",
    ) -> HeliosTransformer:
        """Load a diffusers-format transformer folder (config.json + safetensors).

        ``batch_invariant`` defaults to True on CPU and False elsewhere; ``kernels`` to "triton"
        on CUDA (when triton is installed) and "native" elsewhere.
        """
        from ..loader import load_transformer

        return load_transformer(path, dtype=dtype, device=device, batch_invariant=batch_invariant, kernels=kernels,
                                attention=attention)

    @classmethod
    def from_preset(
        cls, name: str, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu", batch_invariant=None,
        kernels: str | None = None, draw_on_device: bool = False, attention: str = "sdpa",
    ) -> HeliosTransformer:
        """A preset ("helios-tiny", "helios-14b") with deterministic random weights (drawn on the
        CPU, or on ``device`` with ``draw_on_device``: see ``loader.random_init``)."""
        from ..config import get_preset
        from ..layers.ops import default_backend
        from ..loader import default_batch_invariance, random_init

        # Built on the meta device first: no time is spent on a default init that is overwritten.
        with torch.device("meta"):
            model = cls(get_preset(name), default_batch_invariance(device, batch_invariant),
                        kernels or default_backend(device), attention)
        random_init(model, seed, dtype, device, draw_on_device)
        return model.eval()

    def history_kernels(self) -> dict[str, tuple[int, int, int]]:
        return {
            term: tuple(scale * p for p in self.config.patch_size) for term, scale in HISTORY_TERM_SCALES.items()
        }

    @classmethod
    def is_fp32_parameter(cls, name: str) -> bool:
        return any(pattern in name for pattern in cls.fp32_parameter_patterns)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype, under the name diffusers models give it (engines read ``transformer.dtype``)."""
        return self.compute_dtype

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        latents_history_short: torch.Tensor | None = None,
        latents_history_mid: torch.Tensor | None = None,
        latents_history_long: torch.Tensor | None = None,
        indices_hidden_states: torch.Tensor | None = None,
        indices_latents_history_short: torch.Tensor | None = None,
        indices_latents_history_mid: torch.Tensor | None = None,
        indices_latents_history_long: torch.Tensor | None = None,
        text_context: TextContext | None = None,
        rotary: RotaryTable | None = None,
    ) -> torch.Tensor:
        """Velocity prediction for the noisy chunk ``hidden_states`` [B, C, T, H, W].

        ``timestep`` is [B] (one per sample, int or float) or a single value for all;
        ``encoder_hidden_states`` is [B, L, text_dim], or ``text_context`` gives what the
        blocks read of it, computed before (``text_context``). History latents are [B, C, t, H', W']
        at full latent resolution with frame indices [B|1, t] (relative RoPE positions).
        ``rotary``: the sequence's RoPE table, made before by ``sequence_rotary_table`` for these
        shapes and indices (a caller that repeats a geometry keeps it); without it, made here.
        """
        batch = hidden_states.shape[0]
        dtype = self.compute_dtype
        timestep = self._batched_timestep(timestep, batch, hidden_states.device)

        latents = {"short": latents_history_short, "mid": latents_history_mid, "long": latents_history_long}
        indices = {"short": indices_latents_history_short, "mid": indices_latents_history_mid,
                   "long": indices_latents_history_long}
        noisy = self._embed_noisy(hidden_states.to(dtype))
        history = self._embed_history(latents, indices, dtype)
        terms = [term.tokens.expand(batch, -1, -1) for term in history + [noisy]]
        shards = self._shards([term.shape[1] for term in terms], hidden_states.device)
        if shards is not None:  # this rank's share of every term
            terms = [shards.share(term) for term in terms]
        h = torch.cat(terms, dim=1).contiguous()
        if rotary is None:
            history_sizes = {term: tuple(x.shape[2:]) for term, x in latents.items() if x is not None}
            rotary = self.sequence_rotary_table(tuple(hidden_states.shape[2:]), indices_hidden_states, history_sizes,
                                                indices, hidden_states.device)
        num_history = h.shape[1] - terms[-1].shape[1]

        noisy_time = self.time_embedding(timestep, dtype)
        history_time = noisy_time
        if self.config.zero_history_timestep:
            history_time = self.time_embedding(torch.zeros(1, dtype=timestep.dtype, device=timestep.device), dtype)
        modulation = SegmentParams(history_time.modulation.float(), noisy_time.modulation.float())
        if text_context is not None:
            text_kv = text_context.kv
        else:  # each block's keys and values made just before it needs them
            text = self.text_embedding(encoder_hidden_states.to(dtype))
            text_kv = (block.cross_attn.text_kv(text) for block in self.blocks)

        for block, kv in zip(self.blocks, text_kv):
            h = block(h, kv, modulation, rotary, num_history, shards)
        out = self._head(h[:, num_history:], noisy_time.temb)
        if shards is not None:  # every rank's noisy tokens, for the sampler
            out = shards.gather(out, noisy.tokens.shape[1])
        return self._unpatchify(out, hidden_states.shape)

    def _shards(self, term_counts: list[int], device: torch.device) -> TokenShards | None:
        """The split of a forward whose terms have these token counts; None on one rank."""
        if self.sequence_parallel is None:
            return None
        return self.sequence_parallel.shards(tuple(term_counts), device)

    def text_context(self, encoder_hidden_states: torch.Tensor) -> TextContext:
        """Every block's cross-attention keys and values for text embeddings [B, L, text_dim]."""
        text = self.text_embedding(encoder_hidden_states.to(self.compute_dtype))
        return TextContext([block.cross_attn.text_kv(text) for block in self.blocks])

    @staticmethod
    def _batched_timestep(timestep, batch: int, device) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, device=device)
        if timestep.ndim == 0 or timestep.numel() == 1:
            return timestep.reshape(1).expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must have shape [{batch}] or hold one value, got {tuple(timestep.shape)}")
        return timestep

    def sequence_rotary_table(
        self,
        noisy_size: tuple[int, int, int],
        noisy_indices: torch.Tensor | None,
        history_sizes: dict[str, tuple[int, int, int]],
        history_indices: dict[str, torch.Tensor | None],
        device: torch.device,
    ) -> RotaryTable:
        """The RoPE table of a whole sequence [long | mid | short history | noisy], [B|1, N, head_dim / 2].

        A function of the latents' sizes (T, H, W of the noisy chunk and of each present history
        term, Python ints) and of the frame indices, never of the latents' values: a caller whose
        forwards repeat a geometry with the same indices makes it once and passes it to ``forward``.
        Tables with batch 1 stay batch 1; the rotation broadcasts them over the batch.
        """
        # The noisy tokens' grid, as the patch embedding makes it (a trailing remainder dropped).
        frames, height, width = (size // p for size, p in zip(noisy_size, self.config.patch_size))
        if noisy_indices is None:
            noisy_indices = torch.arange(frames, device=device)[None]
        tables = [self._history_rotary(term, history_sizes[term], history_indices[term])
                  for term in ("long", "mid", "short") if term in history_sizes]
        tables.append(rotary_table(noisy_indices, height, width, self.config.rope_dim, self.config.rope_theta))
        shards = self._shards([table.cos.shape[1] for table in tables], device)
        if shards is not None:  # the rows of this rank's tokens
            tables = [RotaryTable(shards.share(table.cos), shards.share(table.sin)) for table in tables]
        return RotaryTable.cat(tables)

    def _history_rotary(self, term: str, size: tuple[int, int, int], frame_indices: torch.Tensor) -> RotaryTable:
        """The table of one history term of latent size (t, H, W)."""
        # RoPE positions of every history term live on the short term's (1x patch) grid; mid and
        # long tokens average the positions they cover.
        _, ph, pw = self.config.patch_size
        kernel = self.history_kernels()[term]
        pool = None if term == "short" else tuple(k // p for k, p in zip(kernel, self.config.patch_size))
        return rotary_table(frame_indices, size[1] // ph, size[2] // pw, self.config.rope_dim, self.config.rope_theta,
                            pool)

    def _embed_noisy(self, latents: torch.Tensor) -> TokenTerm:
        tokens, _ = self.patch_embedding(latents)
        return TokenTerm(tokens)

    def _embed_history(self, latents: dict, indices: dict, dtype: torch.dtype) -> list[TokenTerm]:
        """Tokens of the present history terms, in sequence order long, mid, short."""
        for term in HISTORY_TERM_SCALES:
            if (latents[term] is None) != (indices[term] is None):
                raise ValueError(f"latents_history_{term} and indices_latents_history_{term} must be given together")
        present = [term for term in ("long", "mid", "short") if latents[term] is not None]
        terms = []
        for term in present:
            x = latents[term].to(dtype)
            x = x if term == "short" else pad_replicate(x, self.history_kernels()[term])
            tokens, _ = self.history_patch[term](x)
            terms.append(TokenTerm(tokens))
        return terms

    def _head(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Noisy tokens [B, n, D] -> their patches [B, n, C * patch volume]."""
        # The output norm is modulated by temb (not the six-way modulation).
        shift, scale = (self.output_scale_shift_table + temb.unsqueeze(1)).unbind(1)
        shift, scale = SegmentParams(shift[:, None], shift[:, None]), SegmentParams(scale[:, None], scale[:, None])
        return self.proj_out(self.ops.modulated_layer_norm(h, shift, scale, 0, self.config.eps))

    def _unpatchify(self, y: torch.Tensor, noisy_shape: torch.Size) -> torch.Tensor:
        batch, _, frames, height, width = noisy_shape
        patch = self.config.patch_size
        grid = [size // p for size, p in zip((frames, height, width), patch)]
        y = y.reshape(batch, *grid, *patch, -1)
        # channel-fastest patches -> [B, C, T, H, W]
        y = y.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return y.reshape(batch, -1, *(g * p for g, p in zip(grid, patch)))
