"""Keep ultralytics off the network and its settings out of the user's home directory.

Must run before `ultralytics` is first imported: it reads these variables at import.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
_done = False


def configure_ultralytics(config_dir: str | os.PathLike[str] | None = None) -> Path:
    """Set the env ultralytics reads at import; install the fonts its checks would download."""
    global _done
    directory = Path(
        config_dir or os.environ.get("YOLO_CONFIG_DIR") or Path.cwd() / ".ultralytics"
    ).resolve()
    if _done and Path(os.environ["YOLO_CONFIG_DIR"]) == directory:
        return directory
    os.environ["YOLO_CONFIG_DIR"] = str(directory)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    # ultralytics forces OMP_NUM_THREADS=1 on import unless it is already set.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    fonts = directory / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    missing = [name for name in _FONTS if not (fonts / name).exists()]
    if missing:
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        for name in missing:
            shutil.copyfile(source, fonts / name)
    _done = True
    return directory


def import_ultralytics() -> Any:
    """Import ultralytics offline-safe, with settings sync (analytics) switched off."""
    configure_ultralytics()
    import ultralytics
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync"):
        SETTINGS.update({"sync": False})
    return ultralytics


def preload_ultralytics() -> None:
    """Import what a training or a prediction needs (ultralytics' models and trainers, torch,
    torchvision) now: an RQ worker does it once, and the work horses it forks for every job
    share it instead of paying 2-3 s each."""
    import_ultralytics()
    import torchvision  # noqa: F401  ultralytics imports it on the first prediction
    import ultralytics.engine.predictor
    import ultralytics.engine.trainer
    import ultralytics.nn.tasks  # noqa: F401
