"""Ulysses sequence parallelism: one forward's tokens split over a group of ranks.

Each rank holds a share of every token term (long, mid, short history and noisy: the term
padded to a multiple of the group size, then cut in equal slices), so every rank has the same
number of tokens and the history/noisy split of each rank's shard stays a single boundary.
Everything token-wise (projections, norms, RoPE, modulation, the FFN, cross-attention against
the replicated text keys and values, the kernels of kernels/) runs on the local shard. Around
self-attention one all-to-all turns "my tokens, all heads" into "all tokens, my heads", and a
second one turns the result back: 40 heads divide by 2, 4, 5 and 8. The head's output is
gathered so the sampler sees the whole chunk on every rank.

Padding never reaches attention: after the all-to-all the padded positions are dropped from
queries, keys and values (attention is indifferent to token order), and their outputs are zeros.

The transport is torch.distributed (NCCL on GPUs, gloo on CPUs); ``Communicator`` is the only
place that calls it, and counts the bytes each rank sends (compared to the cost model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
import torch
import torch.distributed as dist

MAX_LAYOUTS = 16
"""Token layouts kept per group (each an index tensor): the pyramid stages of a few sizes."""


class Communicator:
    """The collectives of one sequence-parallel group (torch.distributed), with byte counters."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.bytes_sent = {"all_to_all": 0, "all_gather": 0}
        """Bytes this rank has sent to other ranks, by collective (the cost model predicts them)."""

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """x [size, ...]: slice i goes to rank i; slice j of the result came from rank j."""
        x = x.contiguous()
        out = torch.empty_like(x)  # after contiguous(): empty_like keeps a permuted tensor's strides
        dist.all_to_all_single(out, x, group=self.group)
        self.bytes_sent["all_to_all"] += x.numel() * x.element_size() * (self.size - 1) // self.size
        return out

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[size, *x.shape]: every rank's x, in rank order."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        self.bytes_sent["all_gather"] += x.numel() * x.element_size() * (self.size - 1)
        return torch.stack(parts)


def local_count(count: int, size: int) -> int:
    """Tokens of a term each rank holds (the term padded to a multiple of ``size``)."""
    return math.ceil(count / size)


def real_positions(term_counts: Sequence[int], size: int) -> list[int] | None:
    """Positions of the real (unpadded) tokens in the all-to-all's full sequence, which is every
    rank's shard in rank order; None when no term needs padding."""
    if all(count % size == 0 for count in term_counts):
        return None
    shares = [local_count(count, size) for count in term_counts]
    per_rank = sum(shares)
    positions = []
    for rank in range(size):
        offset = rank * per_rank
        for count, share in zip(term_counts, shares):
            positions.extend(offset + i for i in range(share) if rank * share + i < count)
            offset += share
    return positions


class TokenShards:
    """How one forward's tokens are split: built by ``SequenceParallel.shards`` per token geometry."""

    def __init__(self, communicator: Communicator, keep: torch.Tensor | None):
        self.communicator = communicator
        self.keep = keep
        """Indices of the real tokens in the full sequence (on the device), None without padding."""

    @property
    def size(self) -> int:
        return self.communicator.size

    def local(self, count: int) -> int:
        return local_count(count, self.size)

    def share(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's slice of one term [B, n, ...] along the token axis (zero padded)."""
        share = self.local(x.shape[1])
        padding = share * self.size - x.shape[1]
        if padding:
            x = torch.cat([x, x.new_zeros(x.shape[0], padding, *x.shape[2:])], dim=1)
        start = self.communicator.rank * share
        return x[:, start : start + share]

    def attend(self, attend: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``attend`` over every rank's tokens for this rank's heads; q, k, v [B, n_local, heads, d]
        of the local tokens. Returns [B, n_local, heads * d] for the local tokens, all heads."""
        size = self.size
        batch, tokens, heads, dim = q.shape
        # [rank the heads go to, q|k|v, B, n_local, heads/size, d]: one all-to-all for all three.
        qkv = torch.stack([q, k, v]).unflatten(3, (size, heads // size)).permute(3, 0, 1, 2, 4, 5)
        qkv = self.communicator.all_to_all(qkv)  # now [rank the tokens came from, ...]
        qkv = qkv.permute(1, 2, 0, 3, 4, 5).flatten(2, 3)  # [3, B, all tokens, heads/size, d]
        if self.keep is not None:
            qkv = qkv.index_select(2, self.keep)
        out = attend(*qkv.unbind(0)).type_as(q)  # [B, real tokens, heads/size * d]
        if self.keep is not None:
            full = out.new_zeros(batch, size * tokens, out.shape[-1])
            out = full.index_copy_(1, self.keep, out)
        # [rank the tokens go back to, B, n_local, heads/size * d]
        out = out.unflatten(1, (size, tokens)).transpose(0, 1)
        out = self.communicator.all_to_all(out)  # now [rank whose heads these are, ...]
        return out.permute(1, 2, 0, 3).flatten(2)

    def gather(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """Every rank's share [B, share, ...] of one term, joined and unpadded to ``count`` tokens."""
        parts = self.communicator.all_gather(x)  # [size, B, share, ...]
        return parts.transpose(0, 1).flatten(1, 2)[:, :count]


class SequenceParallel:
    """A sequence-parallel group as the transformer uses it: its communicator and the token
    layouts of the geometries seen (made once each: the padding index lives on the device)."""

    def __init__(self, communicator: Communicator):
        self.communicator = communicator
        self._shards: dict[tuple, TokenShards] = {}

    @property
    def size(self) -> int:
        return self.communicator.size

    def shards(self, term_counts: tuple[int, ...], device: torch.device) -> TokenShards:
        """The split of a forward whose terms (long, mid, short, noisy; present ones) have these
        token counts: Python ints, so the lookup never reads the device."""
        key = (term_counts, device)
        shards = self._shards.get(key)
        if shards is None:
            if len(self._shards) >= MAX_LAYOUTS:
                del self._shards[next(iter(self._shards))]
            positions = real_positions(term_counts, self.size)
            keep = None if positions is None else torch.tensor(positions, device=device)
            shards = self._shards[key] = TokenShards(self.communicator, keep)
        return shards



def join_group(rank: int, size: int, address: str, device: torch.device, timeout_s: float) -> SequenceParallel:
    """Join the group of ``size`` ranks that meets at ``address`` (host:port, served by rank 0):
    NCCL between GPUs, gloo between CPU processes. ``timeout_s`` bounds a collective's wait
    for a rank that has gone away."""
    from datetime import timedelta

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://{address}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=timeout_s))
    return SequenceParallel(Communicator())
