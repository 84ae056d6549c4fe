"""`labelpilot models export`: ONNX / OpenVINO exports of a store version, kept only with
holdout parity, written atomically; bad requests are clear CLI errors that write nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from labelpilot.backends.model_store import ModelStore, ModelVersion
from labelpilot.trainers.export import ExportRefused, ExportRequest, export_version
from tests.exported import holdout_zip, shapes_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> ModelStore:
    return ModelStore(tmp_path_factory.mktemp("models") / "store", redis.Redis.from_url(redis_url))


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return holdout_zip(tmp_path_factory.mktemp("holdout"))


@pytest.fixture(scope="module")
def exported(store: ModelStore, shapes_model: Path, holdout: Path) -> ModelVersion:
    """A version exported to ONNX (module-wide: one export for the checks below)."""
    version = shapes_version(store, f"exp{time.time_ns()}", shapes_model, holdout)
    export_version(store, ExportRequest(version.key, version.version, "onnx"))
    return version


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_export_is_recorded_with_its_parity_figures(exported: ModelVersion):
    (record,) = exported.exports().values()
    assert record.format == "onnx" and record.model_file.is_file()
    assert record.model_file.suffix == ".onnx"
    parity = record.info["parity"]
    assert parity["holdout_images"] > 0 and parity["data"] == "holdout.zip"
    assert set(parity["torch"]) == {"map50_95", "map50"}
    assert parity["torch"]["map50"] > 0.5, "the shapes model finds the holdout's shapes"
    for name, value in parity["torch"].items():
        assert abs(parity["onnx"][name] - value) <= 0.005
    assert record.info["class_names"] == ["circle", "square", "triangle"]
    assert record.info["imgsz"] == 160 and record.info["dynamic"] is True
    assert not [p for p in (exported.path / "exports").iterdir() if p.name.startswith(".")]


def test_export_that_scores_worse_is_refused_and_writes_nothing(store: ModelStore,
                                                                 exported: ModelVersion):
    before = _tree(exported.path)
    record = (exported.path / "exports" / "onnx" / "export.json").read_text()
    # exported for 64 px input, a model trained at 160 px finds far less on the holdout
    with pytest.raises(ExportRefused) as refused:
        export_version(store, ExportRequest(exported.key, exported.version, "onnx", imgsz=64))
    message = str(refused.value)
    assert "refused" in message and "(torch)" in message and "(onnx)" in message
    assert refused.value.parity["max_difference"] > 0.005
    assert _tree(exported.path) == before  # the earlier export untouched, nothing staged
    assert (exported.path / "exports" / "onnx" / "export.json").read_text() == record


def _cli(monkeypatch: pytest.MonkeyPatch, store: ModelStore, redis_url: str,
         *args: str) -> tuple[int, str]:
    from labelpilot.cli import app

    monkeypatch.setenv("MODEL_DIR", str(store.root.parent))
    monkeypatch.setenv("REDIS_URL", redis_url)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_bad_exports_are_clear_cli_errors_that_write_nothing(
        monkeypatch: pytest.MonkeyPatch, store: ModelStore, shapes_model: Path, redis_url: str,
        exported: ModelVersion):
    bare = shapes_version(store, f"bare{time.time_ns()}", shapes_model, holdout=None)
    cases = {
        ("models", "export", exported.key, exported.version, "--format", "tflite"):
            "unknown export format 'tflite'",
        ("models", "export", exported.key, "v9", "--format", "onnx"):
            f"no version v9 of model '{exported.key}'",
        ("models", "export", "no-such-model", "v1"): "no version v1 of model 'no-such-model'",
        ("models", "export", exported.key, exported.version, "--imgsz", "100"):
            "must be a multiple of 32",
        ("models", "export", bare.key, bare.version): "has no holdout kept",
        ("models", "export", bare.key, bare.version, "--data", "/no/data.yaml"):
            "no such data yaml",
    }
    before = _tree(store.root)
    for args, expected in cases.items():
        code, output = _cli(monkeypatch, store, redis_url, *args)
        assert code == 2, (args, output)
        assert expected in output and "Traceback" not in output, output
    assert _tree(store.root) == before


def test_models_list_shows_the_exports(monkeypatch: pytest.MonkeyPatch, store: ModelStore,
                                       redis_url: str, exported: ModelVersion):
    code, output = _cli(monkeypatch, store, redis_url, "models", "list")
    assert code == 0, output
    line = output.split(exported.model_version, 1)[1].splitlines()[1]
    parity = json.loads((exported.path / "exports/onnx/export.json").read_text())["parity"]
    assert line.strip() == (f"exports: onnx (holdout mAP50-95 {parity['onnx']['map50_95']:.3f}"
                            f" vs torch {parity['torch']['map50_95']:.3f})")


def test_a_trained_version_keeps_its_holdout_and_exports_without_data(
        store: ModelStore, shapes_model: Path, tmp_path: Path):
    """Training (the real pipeline, a 2-epoch fine-tune) keeps the holdout it judged the
    version by; the export's parity runs on exactly those images."""
    from labelpilot.trainers.pipeline import TrainParams, TrainRequest, run_training
    from tests.exported import CLASSES
    from tests.helpers import shapes_samples

    key = f"trained{time.time_ns()}"
    request = TrainRequest(key=key, task="detect", class_names=CLASSES,
                           samples=shapes_samples(tmp_path / "images", 40),
                           base_model=str(shapes_model),
                           params=TrainParams(epochs=2, imgsz=160, batch=8))
    result = run_training(request, store)
    version = store.get(key, result["version"])
    assert version.holdout.is_file()
    record = export_version(store, ExportRequest(key, version.version, "onnx"))
    parity = record.info["parity"]
    assert parity["data"] == "holdout.zip"
    assert parity["holdout_images"] == result["metrics"]["holdout_images"] > 0
    # the PyTorch figures on the kept holdout are the ones training measured for the version
    assert parity["torch"]["map50_95"] == pytest.approx(
        result["metrics"]["candidate"]["map50_95"], abs=1e-3)
