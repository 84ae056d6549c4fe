"""The one settings model: validated at start-up, documented in the README from the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labelpilot.settings import Settings, SettingsError, load_settings, settings_markdown

REPO = Path(__file__).resolve().parents[1]


def test_readme_configuration_tables_are_generated_from_the_model() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- settings:begin -->\n")[1].split("<!-- settings:end -->")[0]
    assert block == settings_markdown(), (
        "README's configuration tables drifted: paste `labelpilot config --markdown` between "
        "the settings markers")


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra or {}
        assert field.description and extra.get("group") and extra.get("env"), name  # type: ignore[union-attr]


def test_a_bad_value_names_the_variable_and_what_is_expected(monkeypatch) -> None:
    monkeypatch.setenv("LABELPILOT_MAX_BATCH", "many")
    monkeypatch.setenv("LABELPILOT_SCORE_THRESHOLD", "2")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "LABELPILOT_MAX_BATCH='many'" in message and "valid integer" in message
    assert "LABELPILOT_SCORE_THRESHOLD='2'" in message and "less than or equal to 1" in message


def test_label_studio_names_and_aliases(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LABEL_STUDIO_HOST", "http://ls:8080")
    monkeypatch.setenv("LABEL_STUDIO_ACCESS_TOKEN", "tok")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("LABELPILOT_ALLOWED_HOSTS", " a.example, b.example ,")
    monkeypatch.setenv("LABELPILOT_MODEL_POSE", "my-pose.pt")
    monkeypatch.setenv("LABELPILOT_PRELOAD", "")
    settings = load_settings()
    assert settings.label_studio_url == "http://ls:8080"
    assert settings.label_studio_api_key is not None
    assert settings.label_studio_api_key.get_secret_value() == "tok"
    assert settings.resolved_model_dir == tmp_path.resolve()
    assert settings.allowed_hosts == ("a.example", "b.example")
    assert settings.task_models_set() == {"pose": "my-pose.pt"}
    assert settings.task_model("detect") == "yolo11n.pt"
    assert settings.models_to_preload() == []
    monkeypatch.delenv("LABELPILOT_PRELOAD")
    assert load_settings().models_to_preload() == ["my-pose.pt"]


def test_the_cli_refuses_to_start_on_a_bad_value_and_says_why() -> None:
    env = {**os.environ, "WORKERS": "0"}
    done = subprocess.run([sys.executable, "-m", "labelpilot", "config"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "WORKERS=" in done.stderr and "greater than 0" in done.stderr


def test_config_shows_values_without_secrets() -> None:
    env = {**os.environ, "BASIC_AUTH_PASS": "hunter2", "BASIC_AUTH_USER": "ls"}
    done = subprocess.run([sys.executable, "-m", "labelpilot", "config"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=True)
    assert "BASIC_AUTH_USER=ls" in done.stdout and "hunter2" not in done.stdout
    assert "BASIC_AUTH_PASS=**********" in done.stdout
