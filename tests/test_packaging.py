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
    assert not any(name.startswith(("tests/", "benchmarks/", "examples/")) for name in names)


def test_installed_distribution_declares_only_helios_serve():
    top_level = metadata.distribution("helios-serve").read_text("top_level.txt")
    assert top_level.split() == ["helios_serve"]
    import helios_serve.kernels
    import helios_serve.model_executor

    assert Path(helios_serve.model_executor.__file__).parent.name == "model_executor"
    assert Path(helios_serve.kernels.__file__).parent.name == "kernels"


def _absolute_imports(folder: Path) -> set[str]:
    modules = set()
    for path in folder.rglob("*.py"):
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
