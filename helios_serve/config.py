"""The configuration tree: model, engine, server and scale-out, each field with its help text.

``helios-serve serve``'s options are generated from this tree (``add_config_arguments``): every
field has a flag, its help and default are written once, here. ``generate`` takes the model
section and the sampling schema (sampling_params.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field, replace

from .hardware import ACCELERATORS
from .model_executor.step_io import RunnerConfig, setting

ORIGIN = re.compile(r"^https?://[^/?#\s]+$")
"""A web origin as browsers send it: scheme and host (and port), nothing after."""

# A forward of the 14B model at 384x640 has 11,040 tokens (spec §8.1).
FULL_RES_TOKENS = 11_040
LARGE_MODEL_PARAMETERS = 1_000_000_000

ModelConfig = RunnerConfig
"""The model section: which checkpoint, device, dtype and kernels (model_executor's own config)."""


@dataclass(frozen=True)
class EngineConfig:
    """The engine: the step scheduler's budgets and policy."""

    max_rows_per_forward: int | None = setting(
        None, "rows (requests, two each with CFG) in one transformer forward (default: from the model size)")
    max_tokens_per_forward: int | None = setting(
        None, "sum over rows of tokens (history + noisy) in one forward (default: from the model size)")
    max_running_requests: int | None = setting(
        None, "requests holding device state at once, their slots (default: from the model size)")
    max_waiting_requests: int = setting(256, "queue length past which new requests are refused with 429")
    policy: str = setting(
        "fcfs", "ordering policy: fcfs finishes requests in arrival order (younger ones share a forward only when "
                "it costs the oldest little: the share limit below); round-robin advances every admitted request in "
                "turn, batched; priority; deadline (EDF for real-time streams)",
        choices=("fcfs", "round-robin", "priority", "deadline"))
    max_share_slowdown: float = setting(
        0.1, "fcfs policy: a younger request joins the oldest one's forward only while the cost model predicts that "
             "forward slower by at most this fraction (0: never share)")
    max_encodes_per_step: int = setting(2, "prompt encodes run alongside one step's forward")
    max_decodes_per_step: int = setting(2, "chunk decodes started alongside one step's forward")
    max_decodes_in_flight: int | None = setting(
        None, "chunk decodes a request may have running behind its denoising (the VAE of chunk k overlaps the "
              "next chunk's forwards; frames are bitwise those of a serial decode); 0 decodes each chunk before "
              "the next begins (default: 2 on CUDA, 0 on a CPU, where a decode thread competes with the "
              "forward for the same cores: measured slower)")
    simulate: str | None = setting(
        None, "run no model: simulate this GPU (h100, h200, a100, ...: those `estimate` knows). Every unit of work "
              "waits as long as the cost model gives for the released 14B model, chunks are synthetic frames, "
              "everything else runs for real; the model is a released name or a checkpoint directory (its recipe)",
        choices=tuple(ACCELERATORS))
    simulate_mfu: float = setting(0.5, "--simulate: the share of the GPU's bf16 peak the transformer reaches")
    sequence_parallel_size: int = setting(
        1, "ranks that split every forward's tokens (Ulysses sequence parallelism): one stream runs that many "
           "times the GPUs for a faster chunk. The server starts the other ranks itself, on the GPUs after the "
           "model's device (cuda:0 with 2 ranks uses cuda:0 and cuda:1); it must divide the attention heads (40 "
           "for the released models: 2, 4, 5 or 8)")
    request_timeout_s: float | None = setting(None, "per-request time limit in seconds (default: none)",
                                              flag="--request-timeout")
    priority_aging_s: float = setting(
        10.0, "priority policy: one priority level is gained per this many seconds without service")
    background_slack_s: float = setting(
        2.0, "deadline policy: requests without a playback rate are due this long after their last service")

    def __post_init__(self) -> None:
        for name in ("max_rows_per_forward", "max_tokens_per_forward", "max_running_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name in ("max_waiting_requests", "max_encodes_per_step", "max_decodes_per_step", "sequence_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_decodes_in_flight is not None and self.max_decodes_in_flight < 0:
            raise ValueError(f"max_decodes_in_flight must be at least 0, got {self.max_decodes_in_flight}")
        from .core.policy import POLICIES

        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")
        if not 0 < self.simulate_mfu <= 1:
            raise ValueError(f"simulate_mfu must be in (0, 1], got {self.simulate_mfu}")
        if self.max_share_slowdown < 0:
            raise ValueError(f"max_share_slowdown must be at least 0, got {self.max_share_slowdown}")
        if self.request_timeout_s is not None and self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")

    def resolved(self, num_parameters: int, decodes_in_background: bool = False) -> EngineConfig:
        """Fill the budgets left as None from the model size (and the decode overlap from whether
        the executor decodes in the background).

        A 14B model is compute-bound at batch 1 and each stage-2 row holds ~1.2-3 GiB of
        activations (performance-model.md §3.7), so a few rows per forward; a small model
        takes many.
        """
        large = num_parameters >= LARGE_MODEL_PARAMETERS
        rows = self.max_rows_per_forward or (8 if large else 32)
        return replace(
            self,
            max_rows_per_forward=rows,
            max_tokens_per_forward=self.max_tokens_per_forward or rows * FULL_RES_TOKENS,
            max_running_requests=self.max_running_requests or (32 if large else 64),
            max_decodes_in_flight=(2 if decodes_in_background else 0) if self.max_decodes_in_flight is None
            else self.max_decodes_in_flight,
        )


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP server: where it listens, who may call it, where jobs are kept."""

    host: str = setting("127.0.0.1", "address to bind (0.0.0.0 exposes it to the network)")
    port: int = setting(8000, "TCP port")
    api_key: str | None = setting(None, "require 'Authorization: Bearer KEY' on /v1 (default: $HELIOS_API_KEY, "
                                        "else no key)", env="HELIOS_API_KEY")
    data_dir: str = setting("./helios-data", "job database and video files")
    retention_hours: float = setting(24.0, "finished videos are deleted this many hours after they finish")
    max_upload_mb: float = setting(64.0, "largest request body in MiB (image and video uploads)")
    min_free_disk_mb: float = setting(
        1024.0, "new videos are refused (507) while the data directory's disk has less free space than this, "
                "in MiB, so running videos can still be written")
    max_stream_seconds: float = setting(
        3600.0, "a live stream (realtime without num_frames or seconds, or a WebSocket session without them) ends, "
                "completed, after this many seconds of video")
    max_kept_stream_mb: float = setting(
        2048.0, "a live stream created with keep keeps every segment for its final MP4; it ends, completed, when its "
                "segments pass this many MiB")
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"))
    allowed_hosts: str | None = setting(
        None, "more names the server answers to, comma-separated ('*': any). It answers to its --host; bound to a "
              "loopback address or 0.0.0.0 also to localhost, 127.0.0.1 and ::1, and bound to 0.0.0.0 to any IP "
              "address. A request naming another Host is refused (400), so a web page cannot reach the server "
              "through a DNS name it rebinds to the server's address (default: none)")
    allowed_origins: str | None = setting(
        None, "web origins (scheme://host[:port], comma-separated, '*': any) whose pages may call the API: they "
              "get CORS headers, may POST and open the WebSocket; without this only the server's own pages may "
              "(default: none)")

    def __post_init__(self) -> None:
        for origin in self.allowed_origin_list:
            if origin != "*" and not ORIGIN.match(origin):
                raise ValueError(f"allowed_origins: {origin!r} is not an origin like https://example.com:8443")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be from 1 to 65535, got {self.port}")
        for name in ("retention_hours", "max_upload_mb", "max_stream_seconds", "max_kept_stream_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_free_disk_mb < 0:
            raise ValueError(f"min_free_disk_mb must be at least 0, got {self.min_free_disk_mb}")

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        return _comma_list(self.allowed_hosts)

    @property
    def allowed_origin_list(self) -> tuple[str, ...]:
        """Without a trailing slash, as browsers send them in the Origin header."""
        return tuple(origin.rstrip("/") for origin in _comma_list(self.allowed_origins))


def _comma_list(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in (text or "").split(",") if part.strip())


@dataclass(frozen=True)
class ScaleOutConfig:
    """Scale out with Ray Serve (pip install 'helios-serve[ray]'): engine replicas behind one endpoint."""

    replicas: int | None = setting(None, "run this many engine replicas behind one endpoint with Ray Serve "
                                         "(default: one process, no Ray)")
    ray_address: str | None = setting(None, "join this Ray cluster (e.g. ray://head:10001 or auto); without it "
                                             "a local Ray is started")
    gpus_per_replica: float | None = setting(None, "GPUs each replica reserves, all on one node (default: when the "
                                                   "cluster has GPUs, one per sequence-parallel rank, plus one when "
                                                   "the VAE device is a GPU; else 0)")
    cpus_per_replica: float = setting(1.0, "CPUs each replica reserves")

    @property
    def enabled(self) -> bool:
        return self.replicas is not None or self.ray_address is not None

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")


@dataclass(frozen=True)
class HeliosConfig:
    """Everything ``helios-serve serve`` is told."""

    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    scale_out: ScaleOutConfig = field(default_factory=ScaleOutConfig)


# -- the generated command line ----------------------------------------------------------------
def _flag(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def _value_type(config_class, item: dataclasses.Field):
    hint = typing.get_type_hints(config_class)[item.name]
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint]
    return kinds[0]


def help_with_default(help: str, default, none_means: str | None = None) -> str:
    """Help text that shows its default once: as written in the help, else appended."""
    if "(default:" in help:
        return help
    if default is None:
        return f"{help} (default: {none_means})" if none_means else help
    return f"{help} (default: {default if default != '' else 'none'})"


def add_config_arguments(parser, config_class, positional: tuple[str, ...] = ()) -> None:
    """Options for every field of a config dataclass, a nested section as its own group
    (titled by its docstring); values are typed from the annotations. Fields named in
    ``positional`` are positional arguments (``helios-serve serve MODEL``). Field names are
    unique across the tree, so each is its option's destination."""
    sections = _sections(config_class)
    for item in dataclasses.fields(config_class):
        if item.name in sections:
            section = sections[item.name]
            group = parser.add_argument_group(item.name.replace("_", " "), section.__doc__)
            add_config_arguments(group, section, positional)
            continue
        add_field_argument(parser, config_class, item.name, positional=item.name in positional)


def add_field_argument(parser, config_class, name: str, positional: bool = False) -> None:
    """The option of one config field (``generate`` takes a few engine fields this way)."""
    item = config_class.__dataclass_fields__[name]
    default = item.default
    if item.metadata.get("env"):  # its help names the variable; the value (a secret) is never shown
        default = os.environ.get(item.metadata["env"], default)
    options = dict(dest=item.name, default=default, type=_value_type(config_class, item),
                   choices=item.metadata.get("choices"), help=help_with_default(item.metadata["help"], item.default),
                   metavar=None if item.metadata.get("choices") else item.name.upper())
    if positional:
        del options["dest"]
        parser.add_argument(item.name, nargs="?", **options)
    else:
        parser.add_argument(_flag(item), **options)


def _sections(config_class) -> dict[str, type]:
    hints = typing.get_type_hints(config_class)
    return {name: kind for name, kind in hints.items() if dataclasses.is_dataclass(kind)}


def config_from_args(config_class, args: argparse.Namespace):
    """The config (tree) from the options ``add_config_arguments`` added; each section checks itself."""
    sections = _sections(config_class)
    values = {item.name: config_from_args(sections[item.name], args) if item.name in sections
              else getattr(args, item.name) for item in dataclasses.fields(config_class)}
    return config_class(**values)
