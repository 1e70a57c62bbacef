"""The command line and the logs follow vLLM's conventions: its option names (ours kept as
aliases), a YAML config file, served model names, TLS and a root path for uvicorn, one log
format, a log line per finished video, the version, fast argument errors, a per-user data dir."""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from helios_serve.cli import build_parser
from helios_serve.config import HeliosConfig, ServerConfig, config_from_args
from test_server_api import wait_for

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, importtime: bool = False):
    """The CLI as a process; returns (result, wall seconds, CPU seconds). The CPU time is what
    the process itself cost: unlike the wall time, it does not grow on a loaded machine."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "helios_serve.cli", *args]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


FAST_CPU_S = 1.0
"""The most CPU seconds a quick answer (the version, an argument error) may cost."""


def parse(*argv: str) -> HeliosConfig:
    return config_from_args(HeliosConfig, build_parser().parse_args(["serve", *argv]))


def serve_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["serve"]


# -- names ---------------------------------------------------------------------------------------
def test_version_is_the_package_metadata():
    result, _, cpu = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"helios-serve {version('helios-serve')}\n"
    assert cpu < FAST_CPU_S, cpu


ALIASES = [  # vLLM's name, ours from earlier releases, the field, a value
    ("--max-num-seqs", "--max-running-requests", "max_running_requests", "3"),
    ("--max-num-batched-tokens", "--max-tokens-per-forward", "max_tokens_per_forward", "12000"),
    ("--scheduling-policy", "--policy", "policy", "deadline"),
    ("--sequence-parallel-size", "--ulysses-degree", "sequence_parallel_size", "2"),
]


@pytest.mark.parametrize("name, alias, field, value", ALIASES)
def test_an_alias_sets_the_same_field_and_help_names_the_vllm_flag_first(name, alias, field, value):
    by_name, by_alias = parse(name, value), parse(alias, value)
    assert by_name == by_alias != parse()
    assert str(getattr(by_name.engine, field)) == value
    help_text = serve_parser().format_help()
    assert f"{name}, {alias} " in help_text, help_text


def test_an_error_names_the_flag_the_user_typed():
    result = run_cli("serve", "--max-num-seqs", "0")[0]
    assert result.returncode == 2 and "--max-num-seqs" in result.stderr and "at least 1" in result.stderr


def test_help_shows_each_default_once():
    parser = build_parser()
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            text = formatter._expand_help(action) if action.help else ""
            assert len(re.findall(r"\(default:", text)) <= 1, (command, action.dest, text)
            assert "(default: None)" not in text, (command, action.dest, text)
            assert action.nargs != 0 or "(default:" not in text, (command, action.dest, text)  # a switch is off
            assert not ("[the model's" in text and "(default:" in text), (command, action.dest, text)
    estimate = run_cli("estimate", "--help")[0].stdout
    assert "[the model's recipe]" in estimate and "None" not in estimate


def test_tls_and_root_path_are_refused_with_ray_replicas_not_ignored():
    for flags in (("--root-path", "/video"), ("--ssl-certfile", "cert.pem")):
        with pytest.raises(ValueError, match="with replicas"):
            parse("--replicas", "2", *flags)
    assert parse("--root-path", "/video/").server.root_path == "/video"


# -- the config file -----------------------------------------------------------------------------
def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_config_file_values_are_used_and_command_line_flags_win(tmp_path):
    path = write(tmp_path / "serve.yaml", "max_num_seqs: 3\nmax-num-batched-tokens: 20000\n"
                                          "scheduling_policy: deadline\nserved-model-name: [helios, helios-video]\n"
                                          "disable_log_requests: true\nmodel: helios-tiny-mid\nport: 9001\n"
                                          "max-running-requests: 4\n")
    config = parse("--config", path)
    # the old name given after the new one in the file wins, as it would on a command line
    assert (config.engine.max_running_requests, config.engine.max_tokens_per_forward, config.engine.policy) == (
        4, 20000, "deadline")
    assert config.server.served_model_name == ("helios", "helios-video") and config.server.disable_log_requests
    assert (config.model.model, config.server.port) == ("helios-tiny-mid", 9001)
    # flags win wherever they stand, before or after the file, and the positional model too
    for argv in (("--max-num-seqs", "7", "--config", path, "helios-tiny"),
                 ("--config", path, "--max-running-requests", "7", "helios-tiny")):
        config = parse(*argv)
        assert (config.engine.max_running_requests, config.model.model, config.server.port) == (7, "helios-tiny", 9001)


@pytest.mark.parametrize("text, says", [
    ("max_num_seq: 3\n", "unknown key 'max_num_seq' (did you mean max-num-seqs?)"),
    ("config: other.yaml\n", "unknown key 'config'"),
    ("port: [1, 2]\n", "port takes one value"),
    ("port: abc\n", "argument --port: invalid int value: 'abc'"),
    ("disable-log-requests: 1\n", "disable-log-requests is a switch, true or false"),
    ("- max_num_seqs\n", "must map option names to values"),
    ("max_num_seqs: [\n", "is not valid YAML"),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, says):
    result = run_cli("serve", "--config", write(tmp_path / "bad.yaml", text))[0]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0], result.stderr


# -- fast errors ---------------------------------------------------------------------------------
def imported(importtime_stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_argument_errors_come_before_torch_is_imported(tmp_path, capsys):
    cases = [
        ("serve", "--max-num-seqs", "0"),
        ("serve", "--port", "x"),
        ("serve", "--port", "70000"),
        ("serve", "--no-such-flag"),
        ("serve", "--root-path", "helios"),
        ("serve", "--ssl-keyfile", str(tmp_path / "key.pem")),
        ("serve", "--ssl-certfile", str(tmp_path / "missing.pem")),
        ("serve", "--config", str(tmp_path / "missing.yaml")),
        ("generate",),
        ("generate", "a fox", "--no-such-flag"),
        ("generate", "a fox", "--num-frames", "0"),
        ("generate", "a fox", "--model", "no-such-model"),
        ("generate", "a fox", "--ulysses-degree", "0"),
    ]
    timings = {}
    for args in cases:
        result, wall, cpu = run_cli(*args, importtime=True)
        modules = imported(result.stderr)
        message = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
        assert result.returncode == 2 and len(message) == 1 and message[0].startswith("helios-serve: error:"), (
            args, message)
        assert "torch" not in modules and "helios_serve.config" in modules, args
        assert cpu < FAST_CPU_S, (args, cpu)
        timings[" ".join(args[:3])] = (round(wall, 2), round(cpu, 2))
    with capsys.disabled():
        print(f"\nargument errors, (wall, CPU) seconds under python -X importtime: {timings}")


# -- the data directory --------------------------------------------------------------------------
def test_the_data_dir_is_a_per_user_state_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert ServerConfig().data_dir == str(tmp_path / "state" / "helios-serve")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # the spec says to ignore a relative one
    assert ServerConfig().data_dir == str(Path.home() / ".local" / "state" / "helios-serve")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert ServerConfig().data_dir == str(Path.home() / ".local" / "state" / "helios-serve")
    assert parse("--data-dir", str(tmp_path)).server.data_dir == str(tmp_path)


def test_serve_opens_its_job_store_in_the_state_directory_not_the_current_one(tmp_path):
    import os
    import socket

    state, cwd = tmp_path / "state", tmp_path / "cwd"
    cwd.mkdir()
    with socket.socket() as taken:  # the start stops at the port check, after the job store was opened
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--port", str(taken.getsockname()[1]), cwd=cwd,
                         env={**os.environ, "XDG_STATE_HOME": str(state)})[0]
    assert result.returncode == 2 and "cannot listen" in result.stderr, result.stderr
    assert (state / "helios-serve" / "jobs.sqlite3").exists()
    assert list(cwd.iterdir()) == []


# -- a live server ---------------------------------------------------------------------------------
def openai_client(live):
    import warnings

    from openai import OpenAI

    warnings.filterwarnings("ignore", message=".*Sora API.*", category=DeprecationWarning)
    return OpenAI(base_url=live.api, api_key="unused", max_retries=0)


def request_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " helios_serve.requests: " in line]


def test_served_model_names_root_path_one_log_format_and_request_lines(tmp_path):
    from openai import NotFoundError

    from live_server import start_server

    live = start_server(tmp_path / "data", "--served-model-name", "helios", "helios-video", "--root-path", "/video/",
                        "--log-level", "info")
    try:
        client = openai_client(live)
        assert [model.id for model in client.models.list()] == ["helios", "helios-video"]
        video = client.videos.create(model="helios-video", prompt="a lantern", size="128x64",
                                     extra_body={"num_frames": 33})
        assert video.model == "helios"  # videos report the first name, never the checkpoint
        with pytest.raises(NotFoundError) as refused:
            client.videos.create(model="helios-tiny", prompt="a lantern", size="128x64")
        assert refused.value.code == "model_not_found"
        assert wait_for(client, video.id).status == "completed"
        # Behind a proxy that strips the prefix: the routes answer without it, the schema names it.
        assert httpx.get(f"{live.url}/openapi.json").json()["servers"] == [{"url": "/video"}]
        deadline = time.monotonic() + 10
        while not request_lines(live.log()) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        live.stop()
    log = live.log()
    assert request_lines(log) and re.search(rf"{video.id} completed: 33 frames in \d+\.\d\d s$", request_lines(log)[0])
    assert re.search(rf"INFO helios_serve\.entrypoints\.openai\.lifecycle: ready at {live.url}: ", log), log
    assert f"at {live.url}, under /video behind its proxy" in log  # the banner
    assert re.search(r"INFO uvicorn\.error: Application startup complete", log), log
    # one format for our loggers and uvicorn's: every log line, whoever wrote it
    logged = [line for line in log.splitlines() if re.search(r" (INFO|WARNING|ERROR) ", line)]
    assert logged and all(LOG_LINE.match(line) for line in logged), logged


def self_signed_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, and the key: PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_server_without_request_lines(tmp_path, monkeypatch):
    """TLS files go to uvicorn (the API answers HTTPS), and disable-log-requests drops the per-video lines."""
    from live_server import free_port, start_process

    cert, key = self_signed_certificate(tmp_path)
    other_key = self_signed_certificate(tmp_path, "other")[1]
    result = run_cli("serve", "--ssl-certfile", str(cert), "--ssl-keyfile", str(other_key))[0]
    assert result.returncode == 2 and f"cannot use the TLS certificate {cert} and key {other_key}" in result.stderr
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx (and the openai SDK on it) trust the certificate
    port, data_dir = free_port(), tmp_path / "data"
    command = [sys.executable, "-m", "helios_serve.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--log-level", "info", "--disable-log-requests"]
    live = start_process(command, f"https://127.0.0.1:{port}", "/ready", tmp_path / "server.log", data_dir=data_dir)
    try:
        client = openai_client(live)
        video = client.videos.create(prompt="a lantern", size="128x64", extra_body={"num_frames": 33})
        assert wait_for(client, video.id).status == "completed"
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not answered
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        time.sleep(0.5)  # the line would be written just after the job's row
    finally:
        live.stop()
    log = live.log()
    assert f"ready at https://127.0.0.1:{port}: " in log and request_lines(log) == [], log
