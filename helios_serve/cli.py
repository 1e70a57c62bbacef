"""The ``helios-serve`` command line."""

from __future__ import annotations

import argparse
import copy
import sys

DEFAULT_MODEL = "helios-tiny"
DTYPES = ("float32", "bfloat16", "float16")


class HelpFormatter(argparse.HelpFormatter):
    """An option's flags (its name and aliases) share one metavar: '--max-num-seqs, --max-running-requests N'."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        values = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {values}"


class DefaultsHelpFormatter(HelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter, but each default shown once: not appended where
    the help already gives it, nor a switch's off or a None (config.help_with_default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        from .config import help_with_default

        if action.default is argparse.SUPPRESS or action.nargs == 0:
            return action.help
        return help_with_default(action.help, action.default)


class CommandParser(argparse.ArgumentParser):
    """A bad flag or value is one line naming it (and where help is), not argparse's usage block.
    A command with a config file option (serve) reads the file's options before its command line's."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"helios-serve: error: {message} (see: {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        parsed, extras = super().parse_known_args(args, copy.copy(namespace))
        path = getattr(parsed, "config_file", None)
        if path is None or not any(action.dest == "config_file" for action in self._actions):
            return parsed, extras
        from .config import config_file_arguments

        try:
            arguments, positionals = config_file_arguments(self, path)
        except ValueError as exc:
            self.error(str(exc))
        self.set_defaults(**positionals)
        return super().parse_known_args(arguments + args, namespace)


class VersionAction(argparse.Action):
    """Prints 'helios-serve X.Y.Z' (the installed package's version) and exits."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"helios-serve {package_version()}")
        parser.exit()


def package_version() -> str:
    """From the package metadata, which pip writes at install; the module's own number if the
    package is not installed (run from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("helios-serve")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _add_check_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="load a model and time one denoising forward (a smoke run)",
        description=(
            "Load a Helios transformer (of any model serve takes, or a transformer folder alone) and run "
            "one denoising forward of one 33-frame chunk with a full history, as the serving "
            "engine will. Prints the model size, the token counts and the time per forward."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help="a model name as serve takes it (helios-tiny, helios-tiny-mid, helios-tiny-base, "
             "helios-distilled-random, helios-base|mid|distilled, a Hugging Face repo id, a diffusers-format "
             "checkpoint directory) or a transformer folder with config.json",
    )
    _add_download_arguments(parser)
    parser.add_argument("--height", type=int, default=384, help="video height in pixels (multiple of 16)")
    parser.add_argument("--width", type=int, default=640, help="video width in pixels (multiple of 16)")
    parser.add_argument(
        "--dtype", choices=("auto", *DTYPES), default="auto",
        help="weights dtype; auto is float32 on CPU, bfloat16 on CUDA",
    )
    parser.add_argument("--device", default="auto", help="torch device; auto is cuda when available, else cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards after one warm-up")
    parser.add_argument("--seed", type=int, default=0, help="seed of the preset's random weights and the inputs")
    parser.set_defaults(handler=_run_check)


def _add_download_arguments(parser) -> None:
    """Where a Hugging Face repo id is looked up and downloaded to, as serve and generate take it."""
    from .config import ModelConfig, add_field_argument

    for name in ("download_dir", "revision"):
        add_field_argument(parser, ModelConfig, name)


def _add_generate_parser(subparsers) -> None:
    from .config import EngineConfig, ModelConfig, add_config_arguments, add_field_argument
    from .sampling_params import add_sampling_arguments

    parser = subparsers.add_parser(
        "generate",
        help="generate one video offline and write it as an MP4",
        description=(
            "Generate a video from a text prompt (optionally conditioned on an image or a video) and "
            "write it as an H.264 MP4, chunk by chunk as the chunks are made. Settings left out take "
            "the model's official defaults (steps, guidance, size); they are the same settings, checked "
            "the same way, as the server's (helios_serve/sampling_params.py)."
        ),
    )
    parser.add_argument("prompt", help="what the video shows")
    parser.add_argument("-o", "--output", default="output.mp4", help="MP4 file to write (default: output.mp4)")
    parser.add_argument("--image", default=None, help="image file for image-to-video")
    parser.add_argument("--video", default=None, help="video file for video-to-video (at least 33 frames)")
    add_sampling_arguments(parser.add_argument_group("video settings"))
    add_config_arguments(parser.add_argument_group("model", ModelConfig.__doc__), ModelConfig)
    add_field_argument(parser.add_argument_group("engine"), EngineConfig, "sequence_parallel_size")
    parser.set_defaults(handler=_run_generate)


def _add_estimate_parser(subparsers) -> None:
    from .hardware import ACCELERATORS

    parser = subparsers.add_parser(
        "estimate",
        help="predict frames/s, real-time streams and memory per GPU from FLOP counts",
        description=(
            "A cost model from first principles: tokens per forward at each pyramid stage (with the "
            "compressed history), FLOPs per forward, chunk and frame for the model's sampling recipe, "
            "VAE decode and text encoder costs, weight and activation memory. It prints the frames "
            "per second one GPU makes at the given efficiency (MFU: the fraction of the GPU's dense "
            "bf16 peak the whole pipeline achieves), the real-time streams it can carry, the GPUs N "
            "streams need, and the memory headroom. No GPU or weights are needed."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="helios-distilled",
                        help="helios-base|mid|distilled or their repo ids (the published configs, nothing is "
                             "downloaded); helios-distilled-random (the same 14B architecture: helios-distilled's "
                             "figures); another Hugging Face repo id or a diffusers-format checkpoint directory (its "
                             "configs and weights, downloaded when missing). The tiny built-ins are refused: their "
                             "figures would say nothing about a GPU")
    _add_download_arguments(parser)
    parser.add_argument("--gpu", default="h100", choices=sorted(ACCELERATORS), help="accelerator")
    parser.add_argument("--mfu", type=float, default=0.5, help="achieved fraction of the dense bf16 peak")
    parser.add_argument("--streams", type=int, default=1, help="concurrent real-time streams to provision for")
    parser.add_argument("--steps", default=None,
                        help="denoising steps, per stage for pyramid models, e.g. 1,1,1 [the model's recipe]")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="> 1 runs a CFG row per request [the model's recipe]")
    parser.add_argument("--no-amplify", action="store_true",
                        help="do not double the first chunk's steps (Distilled amplifies it by default)")
    parser.add_argument("--num-frames", type=int, default=None,
                        help="frames per request, to spread per-request costs [the model's default]")
    parser.add_argument("--height", type=int, default=384, help="video height in pixels")
    parser.add_argument("--width", type=int, default=640, help="video width in pixels")
    parser.add_argument("--fps", type=float, default=24.0, help="playback frame rate of a real-time stream")
    parser.add_argument("--sequence-parallel-size", type=int, default=1, metavar="N",
                        help="DiT GPUs per stream group, splitting every forward's tokens across them (Ulysses "
                             "sequence parallelism); must divide the attention heads (1, 2, 4, 5 or 8 for the 14B "
                             "model). A prediction: the all-to-all rate and latency are assumed, not measured")
    parser.add_argument("--vae-gpu", action="store_true",
                        help="one more GPU per stream group runs the VAE decode and the text encoder, so a chunk "
                             "decodes while the next one denoises (the chunk takes the longer of the two, not "
                             "their sum)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.set_defaults(handler=_run_estimate)


def _run_estimate(args: argparse.Namespace) -> int:
    from .estimate import run_estimate

    return run_estimate(args)


def _run_generate(args: argparse.Namespace) -> int:
    from .generate import run_generate

    return run_generate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="helios-serve",
        description=(
            "Serve the Helios autoregressive video diffusion models: an OpenAI-style video API with live "
            "streaming and a web playground (serve), offline generation (generate), capacity estimates "
            "(estimate) and a smoke test (check). Run 'helios-serve COMMAND --help' for a command's options."
        ),
    )
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True, parser_class=CommandParser)
    from .entrypoints.serve import add_serve_parser, run_serve

    add_serve_parser(subparsers)
    subparsers.choices["serve"].set_defaults(handler=run_serve)
    _add_generate_parser(subparsers)
    _add_check_parser(subparsers)
    _add_estimate_parser(subparsers)
    return parser


def _run_check(args: argparse.Namespace) -> int:
    from .model_executor.smoke import run_smoke_check

    if args.height % 16 or args.width % 16 or args.height <= 0 or args.width <= 0:
        raise UserError(f"--height and --width must be positive multiples of 16, got {args.height}x{args.width}")
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    report = run_smoke_check(
        args.model,
        height=args.height,
        width=args.width,
        dtype=None if args.dtype == "auto" else args.dtype,
        device=None if args.device == "auto" else args.device,
        repeats=args.repeats,
        seed=args.seed,
        download_dir=args.download_dir,
        revision=args.revision,
    )
    print(report.format())
    return 0


class UserError(ValueError):
    """A mistake in the command line or its inputs: reported as one line, no traceback."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # answered before the commands' parsers exist: their imports cost more than it
        print(f"helios-serve {package_version()}")
        return 0
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except (ValueError, OSError) as exc:
        print(f"helios-serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("helios-serve: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
