"""The helios-serve command line, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "helios_serve.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_check_runs_the_default_model():
    result = run_cli("check", "--height", "96", "--width", "160", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "helios-tiny" in result.stdout
    # 96x160 video -> 12x20 latents: 9*6*10 noisy; short 2*6*10, mid 1*3*5, long 4*2*3 (padded up)
    assert "699 per forward = 540 noisy + 159 history (short 120, mid 15, long 24)" in result.stdout
    assert "finite" in result.stdout


def test_check_loads_a_checkpoint_folder(save_reference):
    _, folder = save_reference()
    result = run_cli("check", str(folder), "--height", "64", "--width", "64", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "float32 on cpu" in result.stdout


def assert_one_line_error(capsys, *args):
    from helios_serve.cli import main

    assert main(list(args)) == 2, args
    err = capsys.readouterr().err
    assert err.startswith("helios-serve: error:") and len(err.strip().splitlines()) == 1, err


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    assert_one_line_error(capsys, "check", "no-such-model")
    assert_one_line_error(capsys, "check", "--height", "100")
    assert_one_line_error(capsys, "check", str(tmp_path))
    # and as a real process: exit code 2, no traceback
    result = run_cli("check", "no-such-model")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_example_and_benchmark_run():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    example = subprocess.run([sys.executable, str(repo / "examples/transformer_forward.py")], capture_output=True, text=True)
    assert example.returncode == 0, example.stderr
    assert "velocity (2, 16, 9, 12, 20)" in example.stdout
    bench = subprocess.run(
        [sys.executable, str(repo / "benchmarks/bench_step.py"), "--sizes", "64x64", "--batch-sizes", "1,2", "--repeats", "1"],
        capture_output=True,
        text=True,
    )
    assert bench.returncode == 0, bench.stderr
    assert len(bench.stdout.strip().splitlines()) == 3  # header + one row per batch size


def test_generate_writes_a_playable_mp4(tmp_path):
    from helios_serve.video_io import read_video

    out = tmp_path / "fox.mp4"
    result = run_cli("generate", "a red fox in the snow", "--num-frames", "66", "--height", "64", "--width", "128", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: 65 frames, 128x64" in result.stdout and "frames/s" in result.stdout
    assert "chunk 2/2" in result.stderr  # the progress bar
    frames = read_video(out)
    assert frames.shape == (65, 64, 128, 3)


def test_generate_image_to_video_from_a_checkpoint(tiny_checkpoint, tmp_path):
    import numpy as np
    from PIL import Image

    from helios_serve.video_io import read_video

    _, folder = tiny_checkpoint("distilled")
    image = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "i2v.mp4"
    result = run_cli("generate", "a lantern", "--model", str(folder), "--image", str(image), "--num-frames", "33",
                     "--height", "64", "--width", "64", "--pyramid-steps", "1,1,1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert read_video(out).shape == (33, 64, 64, 3)


def test_generate_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "never.mp4")
    assert_one_line_error(capsys, "generate", "x", "--height", "100", "-o", out)
    assert_one_line_error(capsys, "generate", "x", "--model", "helios-mid", "-o", out)
    assert_one_line_error(capsys, "generate", "x", "--image", str(tmp_path / "missing.png"), "-o", out)
    assert_one_line_error(capsys, "generate", "x", "--pyramid-steps", "2,a", "-o", out)
    assert_one_line_error(capsys, "generate", "x", "--image", __file__, "-o", out)
    assert not (tmp_path / "never.mp4").exists()


def test_serve_errors_are_one_line(capsys, tmp_path):
    import socket

    assert_one_line_error(capsys, "serve", "no-such-model", "--data-dir", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert_one_line_error(capsys, "serve", "--port", str(taken.getsockname()[1]), "--data-dir", str(tmp_path))
    assert_one_line_error(capsys, "serve", "--port", "70000")


def test_bad_flags_are_one_line_with_a_pointer_to_help():
    for args in (("serve", "--port", "abc"), ("generate",), ("bogus",), ("estimate", "--gpu", "tpu"),
                 ("serve", "--no-such-flag")):
        result = run_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("helios-serve: error:") and "--help" in lines[0]


def test_help_explains_every_command_and_its_defaults():
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("serve", "generate", "check", "estimate"):
        assert command in top.stdout
        text = run_cli(command, "--help").stdout
        assert "(default:" in text, command
    serve = run_cli("serve", "--help").stdout
    assert "--replicas" in serve and "--api-key" in serve and "(default: 8000)" in serve


def test_every_engine_setting_is_a_serve_flag_with_its_help():
    """The engine flags of `serve` are generated from EngineConfig: every field reachable, its help
    and default written once (in the config), and the flags build the same config back."""
    import argparse
    import dataclasses

    from helios_serve.config import EngineConfig, add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, EngineConfig)
    assert config_from_args(EngineConfig, parser.parse_args([])) == EngineConfig()
    args = parser.parse_args(["--max-decodes-per-step", "3", "--priority-aging-s", "2.5", "--request-timeout", "60",
                              "--policy", "deadline", "--background-slack-s", "0.5", "--max-encodes-per-step", "4"])
    config = config_from_args(EngineConfig, args)
    assert (config.max_decodes_per_step, config.priority_aging_s, config.request_timeout_s, config.policy,
            config.background_slack_s, config.max_encodes_per_step) == (3, 2.5, 60.0, "deadline", 0.5, 4)
    help_text = " ".join(parser.format_help().split())
    for item in dataclasses.fields(EngineConfig):
        assert " ".join(item.metadata["help"].split()) in help_text, item.name


def test_serve_flags_are_the_whole_config_tree_each_default_shown_once():
    """`serve` is generated from HeliosConfig (model, engine, server, scale-out): every field is
    reachable, the flags build the tree back, and each option's help shows its default once."""
    import dataclasses
    import re

    from helios_serve.cli import build_parser
    from helios_serve.config import HeliosConfig, config_from_args

    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    assert config_from_args(HeliosConfig, parser.parse_args(["serve"])) == HeliosConfig()
    args = parser.parse_args(["serve", "helios-tiny-mid", "--dtype", "bfloat16", "--text-cache-size", "8",
                              "--max-rows-per-forward", "3", "--port", "9001", "--retention-hours", "2",
                              "--replicas", "2", "--gpus-per-replica", "0.5"])
    config = config_from_args(HeliosConfig, args)
    assert (config.model.model, config.model.dtype, config.model.text_cache_size) == ("helios-tiny-mid", "bfloat16", 8)
    assert (config.engine.max_rows_per_forward, config.server.port, config.server.retention_hours) == (3, 9001, 2.0)
    assert (config.scale_out.replicas, config.scale_out.gpus_per_replica) == (2, 0.5)
    dests = {action.dest for action in serve._actions}
    for section in dataclasses.fields(HeliosConfig):
        for item in dataclasses.fields(section.default_factory()):
            assert item.name in dests, (section.name, item.name)
    for action in serve._actions:
        assert len(re.findall(r"\(default:", action.help or "")) <= 1, action.dest
    text = serve.format_help()
    assert "(default: 256)" in text and "(default: 8000)" in text and "None" not in text


def test_a_bad_config_value_is_one_line(capsys):
    from helios_serve.cli import main

    for argv, mentions in ((["serve", "--replicas", "0"], "replicas"), (["serve", "--retention-hours", "-1"],
                                                                         "retention_hours")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and mentions in err, err
