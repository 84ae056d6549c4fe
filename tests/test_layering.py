"""The rooms import one way: labelpilot/ (CLI, app, jobs) → adapters/ → trainers/ → backends/.

Read from the source with `ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what each folder (installed as labelpilot.<folder>) may import of labelpilot
ALLOWED = {
    "backends": {"backends"},
    "trainers": {"trainers", "backends"},
    "adapters": {"adapters", "trainers", "backends", "label_config"},
    "label_config": {"label_config"},
}


def labelpilot_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `labelpilot...` import in a file, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; use labelpilot.*")
            found.append((node.lineno, node.module or ""))
    return [(line, name) for line, name in found if name.split(".")[0] == "labelpilot"]


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "labelpilot"


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_rooms_import_only_downwards(folder: str) -> None:
    wrong = [f"{path.relative_to(REPO)}:{line}: {module}"
             for path in sorted((REPO / folder).rglob("*.py"))
             for line, module in labelpilot_imports(path)
             if room_of(module) not in ALLOWED[folder]]
    assert not wrong, f"{folder}/ may import only {sorted(ALLOWED[folder])}:\n" + "\n".join(wrong)


def test_no_bare_top_level_imports_of_the_folders() -> None:
    """`import adapters` would be AdapterHub's package once installed: only labelpilot.*."""
    bare = []
    for folder in (*ALLOWED, "labelpilot", "tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bare += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names
                         if n.split(".")[0] in ALLOWED]
    assert not bare, "import these as labelpilot.<folder>:\n" + "\n".join(bare)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from labelpilot.redis_conn import get_redis\n")
    assert [room_of(m) for _, m in labelpilot_imports(sample)] == ["labelpilot"]


# Libraries' own variables, set or read where the library is configured; nothing of ours.
ENVIRONMENT_ALLOWED = {
    "backends/offline.py": "ultralytics' YOLO_* and OMP_NUM_THREADS, set before it loads",
    "adapters/metrics.py": "prometheus-client's PROMETHEUS_MULTIPROC_DIR",
}


def test_only_the_settings_read_our_environment() -> None:
    """backends/, adapters/ and trainers/ get their settings passed in (labelpilot.settings)."""
    readers = []
    for folder in ("backends", "adapters", "trainers"):
        for path in sorted((REPO / folder).rglob("*.py")):
            name = str(path.relative_to(REPO))
            tree = ast.parse(path.read_text(), name)
            uses = [n.lineno for n in ast.walk(tree)
                    if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv")
                    and isinstance(n.value, ast.Name) and n.value.id == "os"]
            if uses and name not in ENVIRONMENT_ALLOWED:
                readers.append(f"{name}:{uses[0]}")
    assert not readers, "read the environment only in labelpilot/settings.py:\n" + "\n".join(
        readers)
