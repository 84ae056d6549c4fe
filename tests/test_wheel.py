"""The built wheel: one top-level package, `labelpilot`, with everything in it, installable
beside AdapterHub's `adapters` (a bare top-level `adapters` would mix their files)."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"labelpilot": "labelpilot", "backends": "labelpilot/backends",
           "adapters": "labelpilot/adapters", "trainers": "labelpilot/trainers",
           "label_config": "labelpilot/label_config"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("source")  # builds leave build/ and *.egg-info behind
    for name in (*FOLDERS, "pyproject.toml", "README.md", "LICENSE"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)  # type: ignore[operator]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(source)], check=True, timeout=600)
    (built,) = out.glob("labelpilot-*.whl")
    return built


def test_wheel_holds_one_top_level_package_with_every_module_and_config(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"labelpilot", wheel.name.split("-py")[0]
                                                + ".dist-info"}
    expected = {f"{target}/{path.relative_to(REPO / folder)}"
                for folder, target in FOLDERS.items()
                for pattern in ("*.py", "*.xml", "*.json", "*.html", "*.js")
                for path in (REPO / folder).rglob(pattern)
                if "__pycache__" not in path.parts}
    assert expected - set(names) == set(), "left out of the wheel (pyproject `packages`?)"
    assert "labelpilot/label_config/detection.xml" in names
    assert "labelpilot/label_config/cvat_detection_shapes.json" in names
    license_text = next(n for n in names if n.endswith("LICENSE"))
    assert "AFFERO" in zipfile.ZipFile(wheel).read(license_text).decode()


def test_installs_beside_adapterhub_adapters_and_both_import(wheel: Path, tmp_path: Path
                                                             ) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                  "get_paths()['purelib'])"], check=True, capture_output=True,
                                 text=True).stdout.strip())
    # dependencies (torch, transformers, AdapterHub's adapters, ...) from the project's venv;
    # a plain path entry: its .pth files, such as labelpilot's editable finder, are not run
    (target / "project-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    check = (
        "import adapters, labelpilot, labelpilot.adapters.label_studio.config as c\n"
        "from labelpilot.label_config import load\n"
        "assert hasattr(adapters, 'AutoAdapterModel'), adapters.__file__\n"
        "print(adapters.__file__); print(labelpilot.__file__); print(c.__file__)\n"
        "assert '<View>' in load('detection')\n")
    out = subprocess.run([str(python), "-c", check], cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=300).stdout.split()
    assert out[0].startswith(tuple(site.getsitepackages())), "AdapterHub's adapters imported"
    assert all(p.startswith(str(target)) for p in out[1:]), "labelpilot from the wheel"
