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
from pathlib import Path

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
        None, "sum over rows of tokens (history + noisy) in one forward (default: from the model size)",
        flag="--max-num-batched-tokens", aliases=("--max-tokens-per-forward",))
    max_running_requests: int | None = setting(
        None, "requests holding device state at once, their slots (default: from the model size)",
        flag="--max-num-seqs", aliases=("--max-running-requests",))
    max_waiting_requests: int = setting(256, "queue length past which new requests are refused with 429")
    policy: str = setting(
        "fcfs", "ordering policy: fcfs finishes requests in arrival order (younger ones share a forward only when "
                "it costs the oldest little: the share limit below); round-robin advances every admitted request in "
                "turn, batched; priority; deadline (EDF for real-time streams)",
        choices=("fcfs", "round-robin", "priority", "deadline"), flag="--scheduling-policy", aliases=("--policy",))
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
              "everything else runs for real; the model is a released alias or repo id, or a checkpoint directory (its recipe)",
        choices=tuple(ACCELERATORS))
    simulate_mfu: float = setting(0.5, "a simulated GPU: the share of its bf16 peak the transformer reaches")
    sequence_parallel_size: int = setting(
        1, "ranks that split every forward's tokens (Ulysses sequence parallelism): one stream runs that many "
           "times the GPUs for a faster chunk. The server starts the other ranks itself, on the GPUs after the "
           "model's device (cuda:0 with 2 ranks uses cuda:0 and cuda:1); it must divide the attention heads (40 "
           "for the released models: 2, 4, 5 or 8)", aliases=("--ulysses-degree",))
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
                raise ValueError(f"{_label(type(self), name)} must be at least 1, got {value}")
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
    ssl_keyfile: str | None = setting(None, "TLS private key file (PEM) of the certificate below (default: the "
                                            "certificate file holds the key)")
    ssl_certfile: str | None = setting(None, "TLS certificate file (PEM): the server answers HTTPS instead of HTTP "
                                             "(default: none, plain HTTP)")
    root_path: str = setting("", "URL path prefix of the server behind a proxy that strips it from requests, e.g. "
                                 "/helios: the API schema and docs carry it")
    api_key: str | None = setting(None, "require 'Authorization: Bearer KEY' on /v1 (default: $HELIOS_API_KEY, "
                                        "else no key)", env="HELIOS_API_KEY")
    served_model_name: tuple[str, ...] | None = setting(
        None, "names the model is served under: /v1/models lists them, a request's model field may name any of "
              "them, and videos report the first (default: the model argument)")
    data_dir: str | None = setting(None, "job database and video files (default: $XDG_STATE_HOME/helios-serve, "
                                         "else ~/.local/state/helios-serve)")
    job_store: str | None = setting(
        None, "where jobs are recorded: a postgresql:// URL puts them on a PostgreSQL server, which engine replicas "
              "on several machines share (pip install 'helios-serve[postgres]'); default: a SQLite file in the data "
              "directory", env="HELIOS_JOB_STORE")
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
    uvicorn_log_level: str | None = setting(None, "log level of uvicorn's own messages (default: the log level)",
                                            choices=("critical", "error", "warning", "info", "debug", "trace"))
    disable_log_requests: bool = setting(False, "no log line per finished video (its id, status, frames and "
                                                "seconds)")
    allowed_hosts: str | None = setting(
        None, "more names the server answers to, comma-separated ('*': any). It answers to its host; bound to a "
              "loopback address or 0.0.0.0 also to localhost, 127.0.0.1 and ::1, and bound to 0.0.0.0 to any IP "
              "address. A request naming another Host is refused (400), so a web page cannot reach the server "
              "through a DNS name it rebinds to the server's address (default: none)")
    allowed_origins: str | None = setting(
        None, "web origins (scheme://host[:port], comma-separated, '*': any) whose pages may call the API: they "
              "get CORS headers, may POST and open the WebSocket; without this only the server's own pages may "
              "(default: none)")

    def __post_init__(self) -> None:
        if self.data_dir is None:  # resolved here, not at import, so it follows the environment of the caller
            object.__setattr__(self, "data_dir", default_data_dir())
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile, the certificate the key belongs to")
        if self.root_path and not self.root_path.startswith("/"):
            raise ValueError(f"root_path must start with '/', got {self.root_path!r}")
        object.__setattr__(self, "root_path", self.root_path.rstrip("/"))
        if self.served_model_name is not None:
            if not self.served_model_name or not all(name.strip() for name in self.served_model_name):
                raise ValueError(f"served_model_name needs non-empty names, got {list(self.served_model_name)}")
            object.__setattr__(self, "served_model_name", tuple(self.served_model_name))
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
    def url(self) -> str:
        """Where the server listens, as a client on its machine writes it (a proxy adds the root path)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_certfile else 'http'}://{host}:{self.port}"

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        return _comma_list(self.allowed_hosts)

    @property
    def allowed_origin_list(self) -> tuple[str, ...]:
        """Without a trailing slash, as browsers send them in the Origin header."""
        return tuple(origin.rstrip("/") for origin in _comma_list(self.allowed_origins))


def _comma_list(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in (text or "").split(",") if part.strip())


def default_data_dir() -> str:
    """The per-user state directory of the XDG Base Directory spec, never the current directory: a
    server started from a checkout or a home directory would otherwise leave its jobs there."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"  # the spec ignores relative ones
    return str(base / "helios-serve")


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

    def __post_init__(self) -> None:
        # Ray Serve's own proxy answers HTTP in a deployment with replicas; it is not told these.
        if self.scale_out.enabled and (self.server.ssl_certfile or self.server.root_path):
            raise ValueError("ssl_certfile and root_path are for a single server; with replicas (Ray Serve), "
                             "terminate TLS and strip the path prefix in front of it")

    @property
    def served_model_names(self) -> tuple[str, ...]:
        """What /v1/models lists and a request's model field may name; the first is what videos report."""
        return self.server.served_model_name or (self.model.model,)


# -- the generated command line ----------------------------------------------------------------
def _flag(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def _flags(item: dataclasses.Field) -> tuple[str, ...]:
    """The field's flag first (the one help and errors name), then its aliases."""
    return (_flag(item), *item.metadata.get("aliases", ()))


def _label(config_class, name: str) -> str:
    """A field as an error names it: with its flag when the flag is another name, so a user who
    typed the flag recognises the field."""
    flag = _flag(config_class.__dataclass_fields__[name])
    return name if flag == "--" + name.replace("_", "-") else f"{name} ({flag})"


def _value_type(config_class, item: dataclasses.Field):
    """The type argparse converts a value with, and its nargs: a tuple field takes one or more values."""
    hint = typing.get_type_hints(config_class)[item.name]
    kind = ([kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint])[0]
    if typing.get_origin(kind) is tuple:
        return typing.get_args(kind)[0], "+"
    return kind, None


def help_with_default(help: str, default, none_means: str | None = None) -> str:
    """Help text that shows its default once: as written in the help, else appended; None is
    shown only as ``none_means`` says (a switch passes None: off goes without saying)."""
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
    """The option of one config field (``generate`` takes a few engine fields this way): its flag
    and aliases, a switch for a bool field, one or more values for a tuple field."""
    item = config_class.__dataclass_fields__[name]
    default = item.default
    if item.metadata.get("env"):  # its help names the variable; the value (a secret) is never shown
        default = os.environ.get(item.metadata["env"], default)
    kind, nargs = _value_type(config_class, item)
    if kind is bool:  # a switch: off unless given, which goes without saying
        parser.add_argument(*_flags(item), dest=item.name, action="store_true", default=default,
                            help=help_with_default(item.metadata["help"], None))
        return
    choices = item.metadata.get("choices")
    options = dict(default=default, type=kind, choices=choices,
                   help=help_with_default(item.metadata["help"], item.default),
                   metavar=None if choices else _flag(item).lstrip("-").replace("-", "_").upper())
    if positional:
        parser.add_argument(item.name, nargs="?", **options)
    else:
        parser.add_argument(*_flags(item), dest=item.name, nargs=nargs, **options)


def _sections(config_class) -> dict[str, type]:
    hints = typing.get_type_hints(config_class)
    return {name: kind for name, kind in hints.items() if dataclasses.is_dataclass(kind)}


def config_from_args(config_class, args: argparse.Namespace):
    """The config (tree) from the options ``add_config_arguments`` added; each section checks itself."""
    sections = _sections(config_class)
    values = {item.name: config_from_args(sections[item.name], args) if item.name in sections
              else _arg_value(args, item.name) for item in dataclasses.fields(config_class)}
    return config_class(**values)


def _arg_value(args: argparse.Namespace, name: str):
    value = getattr(args, name)
    return tuple(value) if isinstance(value, list) else value  # the configs are frozen, so hashable


# -- a config file: the same options as YAML ---------------------------------------------------
def config_file_arguments(parser: argparse.ArgumentParser, path: str) -> tuple[list[str], dict]:
    """The command line a YAML config file stands for, as vLLM's ``--config``: keys are option
    names without the dashes (``max-num-seqs`` or ``max_num_seqs``). Returns the options as
    arguments to parse before the command line's own (so a flag given there wins) and the
    positional values as defaults. ValueError names an unknown key or a value of the wrong shape."""
    data = _read_yaml(path)
    options = {flag: action for action in parser._actions for flag in action.option_strings
               if action.dest not in ("help", "config_file")}
    positionals = {action.dest for action in parser._actions if not action.option_strings}
    arguments, defaults = [], {}
    for key, value in data.items():
        name = str(key).replace("_", "-")
        if name.replace("-", "_") in positionals:
            defaults[name.replace("-", "_")] = _scalar(path, key, value)
        elif "--" + name in options:
            arguments += _arguments(path, key, options["--" + name], value)
        else:
            import difflib

            close = difflib.get_close_matches("--" + name, options, n=1)
            hint = f" (did you mean {close[0][2:]}?)" if close else ""
            raise ValueError(f"config file {path}: unknown key {key!r}{hint}")
    return arguments, defaults


def _read_yaml(path: str) -> dict:
    import yaml  # only a config file needs it

    try:
        with open(path, encoding="utf-8") as file:
            data = yaml.safe_load(file)
    except OSError as exc:
        raise ValueError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must map option names to values, got a {type(data).__name__}")
    return data


def _arguments(path: str, key, action: argparse.Action, value) -> list[str]:
    flag = action.option_strings[0]
    if value is None:  # null: the option's default
        return []
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise ValueError(f"config file {path}: {key} is a switch, true or false, got {value!r}")
        return [flag] if value else []
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        return [flag, *(_scalar(path, key, item) for item in values)]
    return [f"{flag}={_scalar(path, key, value)}"]  # with '=', a value starting with '-' stays a value


def _scalar(path: str, key, value) -> str:
    if isinstance(value, (list, dict)):
        raise ValueError(f"config file {path}: {key} takes one value, got {value!r}")
    return str(value).lower() if isinstance(value, bool) else str(value)
