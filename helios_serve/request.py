"""The scheduler's view of a request: progress counters and timing, no tensors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .model_executor.config import token_counts
from .model_executor.cost_model import stage_latent_sizes
from .model_executor.step_io import FRAMES_PER_CHUNK, RequestSpec, UnitPosition


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    # Everything from here on is final.
    FINISHED_COMPLETED = 2
    FINISHED_CANCELLED = 3
    FINISHED_FAILED = 4
    FINISHED_TIMEOUT = 5

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_COMPLETED


class Phase(enum.Enum):
    """The request's next unit of work."""

    ENCODE = "encode"
    BEGIN_CHUNK = "begin_chunk"
    DENOISE = "denoise"
    NEXT_STAGE = "next_stage"
    DECODE = "decode"
    DRAIN = "drain"
    """Every chunk is denoised; its last decodes are still running (no unit to schedule)."""


@dataclass(frozen=True)
class StepGeometry:
    """Token geometry of a forward: rows with equal geometry can share one transformer call."""

    noisy_height: int
    noisy_width: int
    history_height: int
    history_width: int

    def tokens_per_row(self, patch: tuple[int, int, int]) -> int:
        noisy = token_counts(patch, self.noisy_height, self.noisy_width)["noisy"]
        return noisy + token_counts(patch, self.history_height, self.history_width)["history"]


@dataclass(frozen=True)
class Pacing:
    """A real-time stream paced to its playback (vLLM-Omni's ``pace_to_media_time``): chunk k
    begins no earlier than ``lead_s`` seconds before it is due, so generation stays at most that
    far ahead of the client and the GPU's time goes to streams that need it. When a chunk comes
    out more than ``max_lag_s`` late, the player has stalled waiting for it: the playback clock
    restarts from that chunk (it is due when delivered)."""

    lead_s: float = 2.0
    max_lag_s: float = 5.0


@dataclass
class Request:
    request_id: str
    spec: RequestSpec
    arrival_time: float
    priority: int = 0
    """Lower is more urgent (the 'priority' policy)."""
    realtime_fps: float | None = None
    """Playback rate of a real-time stream: chunk k is due k * 33 / fps seconds after playback
    starts, which is when chunk 0 is delivered (chunk 0 itself is due at once); a resumed
    request counts from its first chunk."""
    timeout_s: float | None = None
    pacing: Pacing | None = None
    """Pace a real-time stream (``realtime_fps``) to its playback; None: as fast as it can."""
    status: RequestStatus = RequestStatus.WAITING
    phase: Phase = Phase.ENCODE
    chunk_index: int = 0
    stage_index: int = 0
    step_index: int = 0
    units_done: int = 0
    chunks_begun: int = 0
    """Chunks whose begin unit has been planned: their text is fixed, so a prompt change applies
    from this chunk on (a begin being executed right now counts as begun)."""
    decodes_in_flight: int = 0
    """Chunks whose decode unit ran but whose frames have not come out yet."""
    last_served_step: int = -1
    last_served_time: float = field(default=0.0)
    admitted_time: float | None = None
    first_chunk_time: float | None = None
    finished_time: float | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self.last_served_time = self.arrival_time
        # A resumed request starts after its completed chunks (they count as done work).
        self.chunk_index = self.chunks_begun = self.spec.start_chunk
        self.units_done = sum(self._chunk_units(k) for k in range(self.spec.start_chunk))

    @property
    def num_stages(self) -> int:
        return len(self.spec.stage_steps)

    @property
    def steps_in_stage(self) -> int:
        return self.spec.steps_in_chunk(self.chunk_index)[self.stage_index]

    @property
    def rows_per_forward(self) -> int:
        return 2 if self.spec.use_cfg else 1

    def _chunk_units(self, chunk_index: int) -> int:
        """begin, every step, every stage transition, decode."""
        return sum(self.spec.steps_in_chunk(chunk_index)) + self.num_stages + 1

    @property
    def total_units(self) -> int:
        return 1 + sum(self._chunk_units(k) for k in range(self.spec.num_chunks))

    @property
    def progress(self) -> float:
        return self.units_done / self.total_units

    @property
    def position(self) -> UnitPosition:
        """The exact unit the request's next unit of work is (see UnitPosition)."""
        if self.phase is Phase.BEGIN_CHUNK:
            return UnitPosition(self.chunk_index, 0, 0)
        if self.phase is Phase.NEXT_STAGE:
            return UnitPosition(self.chunk_index, self.stage_index + 1, 0)
        return UnitPosition(self.chunk_index, self.stage_index, self.step_index)

    def geometry(self, stage: int | None = None) -> StepGeometry:
        """Geometry of a forward at ``stage`` (default: the current one).

        The pyramid halves the noisy chunk per coarser stage; the history stays full size.
        """
        stage = self.stage_index if stage is None else stage
        noisy = stage_latent_sizes(self.spec.height, self.spec.width, self.num_stages)[stage]
        return StepGeometry(*noisy, *stage_latent_sizes(self.spec.height, self.spec.width, 1)[0])

    def chunk_deadline(self, chunk_index: int | None = None) -> float | None:
        """When chunk ``chunk_index`` (default: the one in the making) must be delivered."""
        if self.realtime_fps is None:
            return None
        k = self.chunk_index if chunk_index is None else chunk_index
        start = self.first_chunk_time if self.first_chunk_time is not None else self.arrival_time
        return start + (k - self.spec.start_chunk) * FRAMES_PER_CHUNK / self.realtime_fps

    def begin_time(self) -> float | None:
        """The earliest its next chunk may begin (pacing), or None if it may begin at once."""
        if self.pacing is None or self.realtime_fps is None or self.first_chunk_time is None:
            return None
        return self.chunk_deadline() - self.pacing.lead_s

    def delivered(self, chunk_index: int, now: float) -> None:
        """Chunk ``chunk_index`` came out at ``now``: playback starts with the first (the first
        after a resume), and restarts when a paced stream's chunk is later than its player waits."""
        if self.first_chunk_time is None:
            self.first_chunk_time = now
        elif self.pacing is not None and self.realtime_fps is not None:
            late = now - self.chunk_deadline(chunk_index)
            if late > self.pacing.max_lag_s:
                self.first_chunk_time += late

    def deadline_exceeded(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.arrival_time > self.timeout_s
