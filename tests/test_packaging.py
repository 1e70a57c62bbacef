"""The distribution installs one top-level package, and the layers import only what they may."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_has_exactly_one_top_level_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("helios_serve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"helios_serve"}
    assert "helios_serve/model_executor/models/helios_transformer.py" in names
    assert "helios_serve/kernels/__init__.py" in names
    for page in ("index.html", "playground.js", "playground.css"):  # the web playground ships in the wheel
        assert f"helios_serve/entrypoints/openai/playground/{page}" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "examples/")) for name in names)


def test_installed_distribution_declares_only_helios_serve():
    top_level = metadata.distribution("helios-serve").read_text("top_level.txt")
    assert top_level.split() == ["helios_serve"]
    import helios_serve.kernels
    import helios_serve.model_executor

    assert Path(helios_serve.model_executor.__file__).parent.name == "model_executor"
    assert Path(helios_serve.kernels.__file__).parent.name == "kernels"


def _absolute_imports(where: Path) -> set[str]:
    """Modules imported absolutely by a file, or by every file under a folder."""
    modules = set()
    for path in [where] if where.is_file() else where.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module)
    return modules


def test_import_boundaries():
    """kernels imports only torch/triton/stdlib; model_executor never imports the serving layer."""
    kernel_imports = {m.split(".")[0] for m in _absolute_imports(REPO / "kernels")}
    assert kernel_imports <= {"torch", "triton", "__future__", "math", "functools", "os", "typing", "dataclasses"}
    assert not any(m.startswith("helios_serve") for m in _absolute_imports(REPO / "model_executor"))


def test_engine_plugins_are_declared_and_load_their_engine_lazily():
    """Installing helios-serve registers the plugins; importing them needs no engine."""
    points = {(p.group, p.name): p.value for p in metadata.distribution("helios-serve").entry_points}
    assert points[("vllm_omni.general_plugins", "helios_serve")] == "helios_serve.integrations.vllm_omni:register"
    assert points[("vllm_omni.platform_plugins", "helios_serve_cpu")] == "helios_serve.integrations.vllm_omni:cpu_platform"
    assert points[("sglang.multimodal_gen.plugins", "helios_serve")] == "helios_serve.integrations.sglang:register"
    # The entry-point modules import, and the CPU platform stays off unless asked for.
    probe = (
        "import sys, os; os.environ.pop('HELIOS_OMNI_CPU', None)\n"
        "import helios_serve.integrations.vllm_omni as v, helios_serve.integrations.sglang\n"
        "import helios_serve.integrations.ray_serve, helios_serve.cli\n"
        "assert v.cpu_platform() is None\n"
        "os.environ['HELIOS_OMNI_CPU'] = '1'; assert v.cpu_platform().endswith('CpuOmniPlatform')\n"
        "assert not {'vllm', 'vllm_omni', 'sglang', 'ray', 'torch'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
    # Nothing outside helios_serve/integrations imports an engine.
    for folder in ("helios_serve", "model_executor", "kernels"):
        for path in (REPO / folder).rglob("*.py"):
            if "integrations" in path.parts:
                continue
            engines = {m for m in _absolute_imports(path) if m.split(".")[0] in ("vllm", "vllm_omni", "sglang", "ray")}
            assert not engines, (path, engines)


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_environment_is_the_one_ci_tests():
    """scripts/install.sh installs the pinned versions of .ci/constraints-core.txt (torch and triton
    excepted: a GPU machine keeps its own build), so a user's tests run on the tested environment."""
    import os

    import pytest

    if os.environ.get("HELIOS_UNPINNED"):
        pytest.skip("installed with HELIOS_UNPINNED=1: setup.py's ranges, not the pins")
    pins = dict(line.strip().split("==", 1) for line in (REPO / ".ci" / "constraints-core.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    installed = {_normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {name: (version, installed.get(_normalise(name))) for name, version in pins.items()
              if name not in ("torch", "triton") and installed.get(_normalise(name)) != version}
    assert differ == {}, f"installed versions differ from the pins (pinned, installed): {differ}"
