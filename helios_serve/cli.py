"""The ``helios-serve`` command line."""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "helios-tiny"
DTYPES = ("float32", "bfloat16", "float16")


def _add_check_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="load a model and time one denoising forward (a smoke run)",
        description=(
            "Load a Helios transformer (a built-in preset or a diffusers-format folder) and run "
            "one denoising forward of one 33-frame chunk with a full history, as the serving "
            "engine will. Prints the model size, the token counts and the time per forward."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help="preset name (helios-tiny, helios-14b) or a transformer folder with config.json",
    )
    parser.add_argument("--height", type=int, default=384, help="video height in pixels (multiple of 16)")
    parser.add_argument("--width", type=int, default=640, help="video width in pixels (multiple of 16)")
    parser.add_argument(
        "--dtype", choices=("auto", *DTYPES), default="auto", help="weights dtype; auto is float32 on CPU, bfloat16 on CUDA"
    )
    parser.add_argument("--device", default="auto", help="torch device; auto is cuda when available, else cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards after one warm-up")
    parser.add_argument("--seed", type=int, default=0, help="seed of the preset's random weights and the inputs")
    parser.set_defaults(handler=_run_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helios-serve",
        description="Serve the Helios autoregressive video diffusion models.",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True)
    _add_check_parser(subparsers)
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
    )
    print(report.format())
    return 0


class UserError(Exception):
    """A mistake in the command line or its inputs: reported as one line, no traceback."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"helios-serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("helios-serve: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
