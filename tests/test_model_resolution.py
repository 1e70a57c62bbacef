"""One resolver for every command: built-ins, aliases, repo ids (from the Hugging Face cache, or
downloaded into it) and local folders, with the real huggingface_hub.

The cache tests lay out a Hugging Face cache on disk as huggingface_hub writes one. The download
tests run the real command line against a small local hub (FakeHub below: the endpoints
snapshot_download calls), pointed to by HF_ENDPOINT, which huggingface_hub reads at import: so
they run in processes of their own. tests/conftest.py keeps this process offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from hf_cache import checkpoint_files, lay_out_cache
from live_server import free_port, start_process

from helios_serve.cli import main
from helios_serve.model_executor.checkpoint import CHECKPOINT_FILES, ModelNotFoundError, resolve_model

REPO = "Org/Helios-Tiny"
MAIN = hashlib.sha1(b"main").hexdigest()
V2 = hashlib.sha1(b"v2").hexdigest()
# What a released repo holds beside the checkpoint: never downloaded.
UNRELATED = {
    ".gitattributes": b"*.safetensors filter=lfs\n",
    "README.md": b"# Helios\n",
    "modular_model_index.json": b"{}",
    "guider/guider_config.json": b"{}",
    "transformer_ode/config.json": b"{}",
    "transformer_ode/diffusion_pytorch_model.safetensors": b"\0" * 64,
}


def as_mid(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same checkpoint sampled like Mid: another revision's content."""
    index = {**json.loads(files["model_index.json"]), "is_distilled": False, "is_cfg_zero_star": True}
    scheduler = {**json.loads(files["scheduler/scheduler_config.json"]), "_class_name": "HeliosScheduler"}
    return {**files, "model_index.json": json.dumps(index).encode(),
            "scheduler/scheduler_config.json": json.dumps(scheduler).encode()}


@pytest.fixture(scope="module")
def tiny_files(tiny_checkpoint) -> dict[str, bytes]:
    _, folder = tiny_checkpoint("distilled")
    return checkpoint_files(folder)


# -- the cache, in this process (offline) ------------------------------------------------------------
def test_a_repo_id_resolves_from_the_cache_by_revision(tmp_path, tiny_files):
    main_snapshot = lay_out_cache(tmp_path, REPO, tiny_files, MAIN, refs=("main",))
    v2_snapshot = lay_out_cache(tmp_path, REPO, as_mid(tiny_files), V2, refs=("v2",))
    cache = str(tmp_path)
    assert resolve_model(REPO, download_dir=cache).resolve() == main_snapshot.resolve()
    assert resolve_model(REPO, download_dir=cache, revision="v2").resolve() == v2_snapshot.resolve()
    assert resolve_model(REPO, download_dir=cache, revision=V2).resolve() == v2_snapshot.resolve()
    with pytest.raises(ModelNotFoundError, match="at revision v3"):
        resolve_model(REPO, download_dir=cache, revision="v3")


def test_builtins_and_local_folders_resolve_to_themselves(tiny_checkpoint):
    for name in ("helios-tiny", "helios-tiny-mid", "helios-tiny-base", "helios-distilled-random"):
        assert resolve_model(name) == name
    _, folder = tiny_checkpoint("distilled")
    assert resolve_model(str(folder)) == folder


def test_a_snapshot_without_its_components_is_not_a_checkpoint(tmp_path, tiny_files):
    """Another tool's fetch of model_index.json alone must not pass for the checkpoint."""
    lay_out_cache(tmp_path, REPO, {"model_index.json": tiny_files["model_index.json"]}, MAIN, refs=("main",))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        resolve_model(REPO, download_dir=str(tmp_path))


def one_line_error(capsys, *args) -> str:
    assert main(list(args)) == 2, args
    err = capsys.readouterr().err
    assert err.startswith("helios-serve: error:") and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_every_command_gives_the_same_offline_error_with_the_command_that_fetches(tmp_path, capsys):
    cache = str(tmp_path / "hub")
    where = ["--download-dir", cache, "--revision", "v2"]
    includes = [word for pattern in CHECKPOINT_FILES for word in ("--include", pattern)]
    command = shlex.join(["hf", "download", "BestWishYsh/Helios-Mid", *includes, "--revision", "v2", "--cache-dir",
                          cache])
    fetch = f"fetch it with: HF_HUB_OFFLINE=0 {command}"
    errors = [
        one_line_error(capsys, "serve", "helios-mid", "--data-dir", str(tmp_path / "data"), *where),
        one_line_error(capsys, "generate", "a fox", "--model", "helios-mid", "-o", str(tmp_path / "x.mp4"), *where),
        one_line_error(capsys, "check", "helios-mid", *where),
        one_line_error(capsys, "estimate", "--model", "Org/Helios-Mid", *where),
    ]
    for error in errors[:3]:
        assert error == errors[0] and error.endswith(fetch), error
        assert f"model 'helios-mid' (BestWishYsh/Helios-Mid at revision v2) is not in the Hugging Face cache {cache}" \
            in error
    assert "hf download Org/Helios-Mid" in errors[3]
    assert not (tmp_path / "x.mp4").exists()


def test_estimate_takes_every_name(capsys):
    """Released names use the published configs (nothing is downloaded, even offline); the random
    built-in has the released architecture; the tiny built-ins are refused."""
    def report(model: str) -> dict:
        assert main(["estimate", "--model", model, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    distilled = report("helios-distilled")
    assert report("BestWishYsh/Helios-Distilled") == distilled == report("helios-distilled-random")
    assert report("helios-mid")["variant"] == "mid"
    error = one_line_error(capsys, "estimate", "--model", "helios-tiny")
    assert "tiny test model" in error and "helios-distilled-random" in error


# -- the command line in processes of their own -------------------------------------------------------
def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helios_serve.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def isolated_env(tmp_path: Path, **variables: str) -> dict:
    """This environment without any Hugging Face settings of its own (or a token), plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    return {**env, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", **variables}


def test_every_command_finds_a_repo_id_through_hf_hub_cache_and_hf_home(tmp_path, tiny_files):
    lay_out_cache(tmp_path / "home" / "hub", REPO, tiny_files, MAIN, refs=("main",))
    offline = {"HF_HUB_OFFLINE": "1"}
    by_cache = isolated_env(tmp_path, HF_HUB_CACHE=str(tmp_path / "home" / "hub"), **offline)
    check = run_cli("check", REPO, "--height", "64", "--width", "64", "--repeats", "1", env=by_cache)
    assert check.returncode == 0, check.stderr
    assert f"model      {REPO}:" in check.stdout and "float32 on cpu" in check.stdout
    out = tmp_path / "fox.mp4"
    generate = run_cli("generate", "a fox", "--model", REPO, "--num-frames", "33", "--height", "64", "--width", "64",
                       "--pyramid-steps", "1,1,1", "-o", str(out), env=by_cache)
    assert generate.returncode == 0, generate.stderr
    assert f"wrote {out}: 33 frames, 64x64" in generate.stdout
    estimate = run_cli("estimate", "--model", REPO, "--json", env={**isolated_env(tmp_path, **offline),
                                                                    "HF_HOME": str(tmp_path / "home")})
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["variant"] == "distilled"


class FakeHub:
    """The Hub endpoints snapshot_download uses, for repos held in memory: the revision API (a
    branch or tag to its commit), the recursive tree listing, and /resolve/ for HEAD (the
    X-Repo-Commit, ETag and Content-Length headers) and GET. Every request is logged."""

    def __init__(self, repos: dict[str, dict]):
        self.repos = repos  # repo id -> {"refs": {name: commit}, "commits": {commit: {path: bytes}}}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self) -> set[str]:
        """Paths of the files sent (GET /resolve/)."""
        return {path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path}

    def answer(self, method: str, path: str) -> tuple[int, dict, bytes]:
        self.requests.append((method, path))
        parts = [unquote(part) for part in urlsplit(path).path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id, kind, revision = "/".join(parts[2:4]), parts[4], parts[5]
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, kind, revision = "/".join(parts[:2]), "resolve", parts[3]
        else:
            return 404, {}, b"{}"
        repo = self.repos.get(repo_id)
        if repo is None:
            return 401, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}'
        commit = repo["refs"].get(revision, revision)
        files = repo["commits"].get(commit)
        if files is None:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b'{"error": "Invalid rev id"}'
        if kind == "revision":
            body = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": name} for name in files]}
            return 200, {}, json.dumps(body).encode()
        if kind == "tree":
            tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in files.items()]
            return 200, {}, json.dumps(tree).encode()
        name = "/".join(parts[4:])
        if name not in files:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"{}"
        data = files[name]
        return 200, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, data

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def reply(self, send_body: bool) -> None:
                status, headers, body = hub.answer(self.command, self.path)
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def do_GET(self):
                self.reply(send_body=True)

            def do_HEAD(self):
                self.reply(send_body=False)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def hub(tiny_files):
    files = {**tiny_files, **UNRELATED}
    hub = FakeHub({REPO: {"refs": {"main": MAIN, "v2": V2}, "commits": {MAIN: files, V2: as_mid(files)}}})
    yield hub
    hub.close()


def online_env(tmp_path: Path, hub: FakeHub) -> dict:
    return isolated_env(tmp_path, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")


def snapshot_files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def test_a_missing_repo_id_is_downloaded_with_only_the_checkpoint_files(tmp_path, hub, tiny_files):
    downloads = tmp_path / "downloads"
    env = online_env(tmp_path, hub)
    estimate = run_cli("estimate", "--model", REPO, "--download-dir", str(downloads), "--json", env=env)
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["variant"] == "distilled"
    assert f"downloading {REPO} from {hub.url} into {downloads}" in estimate.stderr
    assert "100%" in estimate.stderr  # huggingface_hub's progress bars
    snapshot = downloads / "models--Org--Helios-Tiny" / "snapshots" / MAIN
    assert snapshot_files(snapshot) == set(tiny_files)
    assert hub.downloads() == set(tiny_files)  # nothing unrelated crossed the wire either
    assert not (tmp_path / "hf-home" / "hub").exists()  # the download directory, not HF_HOME's cache

    # The next command finds it in the cache without asking the Hub, and loads it.
    asked = len(hub.requests)
    check = run_cli("check", REPO, "--download-dir", str(downloads), "--height", "64", "--width", "64",
                    "--repeats", "1", env=env)
    assert check.returncode == 0, check.stderr
    assert "downloading" not in check.stderr and len(hub.requests) == asked


def test_a_revision_is_downloaded_by_its_name(tmp_path, hub):
    downloads = tmp_path / "downloads"
    estimate = run_cli("estimate", "--model", REPO, "--revision", "v2", "--download-dir", str(downloads), "--json",
                       env=online_env(tmp_path, hub))
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["variant"] == "mid"
    repo = downloads / "models--Org--Helios-Tiny"
    assert (repo / "refs" / "v2").read_text() == V2 and (repo / "snapshots" / V2 / "model_index.json").is_file()
    assert not (repo / "snapshots" / MAIN).exists()


@pytest.mark.parametrize("model,revision,reason", [
    ("Org/No-Such-Model", "main", "no such repository"),
    (REPO, "v9", "the repository has no such revision"),
])
def test_a_failed_download_is_one_line_with_the_command(tmp_path, hub, model, revision, reason):
    result = run_cli("estimate", "--model", model, "--revision", revision, env=online_env(tmp_path, hub))
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert error.startswith(f"helios-serve: error: cannot download {model} at revision {revision} from {hub.url}: "
                            f"{reason}"), error
    assert error.endswith(f"--include 'vae/*.safetensors' --revision {revision}"), error


def test_serve_downloads_before_it_listens(tmp_path, hub, tiny_files):
    """As `vllm serve` does: the download, then the server; a downloadable name is not refused.
    (Listening is enough: the model then loads and warms up in the background, as always.)"""
    port = free_port()
    downloads = tmp_path / "downloads"
    command = [sys.executable, "-m", "helios_serve.cli", "serve", REPO, "--download-dir", str(downloads),
               "--port", str(port), "--data-dir", str(tmp_path / "data"), "--log-level", "warning"]
    server = start_process(command, f"http://127.0.0.1:{port}", "/health", tmp_path / "server.log", timeout=120,
                           env=online_env(tmp_path, hub))
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        assert REPO in [model["id"] for model in models["data"]]
        log = server.log()
        assert log.index(f"downloading {REPO}") < log.index("helios-serve: serving")
        assert hub.downloads() == set(tiny_files)
    finally:
        server.stop()
