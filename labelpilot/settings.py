"""Every setting labelpilot reads, in one validated model (pydantic-settings).

The environment is read here and nowhere else: `load_settings()` at start-up (CLI, gunicorn
app, RQ worker), then the values are handed to what needs them. Label Studio's own names are
kept where LS's ML backends have one (`LABEL_STUDIO_URL`, `MODEL_DIR`, `BASIC_AUTH_USER`, ...).
The README's configuration tables are generated from this model (`labelpilot config --markdown`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from labelpilot.backends.tasks import TASKS

CommaList = Annotated[tuple[str, ...], NoDecode]
GROUPS = {
    "label_studio": "Label Studio",
    "images": "Images",
    "video": "Video",
    "models": "Models",
    "sam": "Interactive SAM",
    "cvat": "CVAT",
    "watch": "Watching: quality, drift, acceptance",
    "server": "Server, Redis and workers",
}


def _field(default: Any, env: str | tuple[str, ...], group: str, help: str, **kw: Any) -> Any:
    names = (env,) if isinstance(env, str) else env
    return Field(default, validation_alias=AliasChoices(*names), description=help,
                 json_schema_extra={"group": group, "env": list(names)}, **kw)


class SettingsError(ValueError):
    """A setting has a value labelpilot cannot use; the message names it and says why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # Label Studio
    label_studio_url: str | None = _field(
        None, ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"), "label_studio",
        "LS address for image downloads and training. Unset: the `hostname` LS sends to "
        "`/setup`.")
    label_studio_api_key: SecretStr | None = _field(
        None, ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"), "label_studio",
        "LS token: a legacy token or a personal access token (refreshed automatically). "
        "Unset: the `access_token` LS sends to `/setup`.")
    local_files_document_root: Path | None = _field(
        None, ("LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"),
        "label_studio", "LS local-files root: `/data/local-files/?d=` images are read from "
        "disk.")
    ls_token_ttl: int = _field(
        3600, "LABELPILOT_LS_TOKEN_TTL", "label_studio",
        "Seconds the token LS sends to `/setup` stays in Redis for the other processes (each "
        "`/setup` renews it; a queued or running training keeps it until it ends). Never "
        "stored when `LABEL_STUDIO_API_KEY` is set.", gt=0)
    basic_auth_user: str | None = _field(
        None, "BASIC_AUTH_USER", "label_studio",
        "HTTP basic auth on the Label Studio endpoints (same names as LS's backends).")
    basic_auth_pass: SecretStr | None = _field(
        None, "BASIC_AUTH_PASS", "label_studio", "Password for `BASIC_AUTH_USER`.")

    # Images
    allowed_hosts: CommaList = _field(
        (), "LABELPILOT_ALLOWED_HOSTS", "images",
        "Extra hosts images may come from (comma list; the LS host is always allowed).")
    max_image_bytes: int = _field(
        50 * 2**20, "LABELPILOT_MAX_IMAGE_BYTES", "images",
        "Larger downloads are refused (that task fails, the others are served).", gt=0)
    max_image_pixels: int = _field(
        64_000_000, "LABELPILOT_MAX_IMAGE_PIXELS", "images",
        "Larger images are refused before decoding.", gt=0)
    image_download_seconds: float = _field(
        20.0, "LABELPILOT_IMAGE_DOWNLOAD_SECONDS", "images",
        "Deadline of one whole image download, however slowly its bytes come (that task "
        "fails, the others are served).", gt=0)

    # Video
    max_video_bytes: int = _field(
        512 * 2**20, "LABELPILOT_MAX_VIDEO_BYTES", "video",
        "Larger video downloads are refused (that task fails, the others are served).", gt=0)
    max_video_seconds: float = _field(
        3600.0, "LABELPILOT_MAX_VIDEO_SECONDS", "video",
        "Longer videos are refused from their header, before decoding.", gt=0)
    video_download_seconds: float = _field(
        120.0, "LABELPILOT_VIDEO_DOWNLOAD_SECONDS", "video",
        "Deadline of one whole video download.", gt=0)
    video_inline_frames: int = _field(
        300, "LABELPILOT_VIDEO_INLINE_FRAMES", "video",
        "Clips of up to this many frames are tracked inside `/predict`; longer ones by a "
        "worker job that posts the prediction to Label Studio when done (LS waits at most "
        "100 s for `/predict`).", ge=0)
    video_keyframe_iou: float = _field(
        0.85, "LABELPILOT_VIDEO_KEYFRAME_IOU", "video",
        "Keyframes are kept where linear interpolation between them would drift from the "
        "tracked box below this IoU: lower means fewer keyframes, looser boxes.", gt=0, le=1)

    # Models
    model_dir: Path = _field(
        Path("models"), "MODEL_DIR", "models",
        "Where model files are looked up; the model store lives in `MODEL_DIR/store`.")
    model_detect: str = _field(TASKS["detect"].default_weights, "LABELPILOT_MODEL_DETECT",
                               "models", "Default detection model.")
    model_segment: str = _field(TASKS["segment"].default_weights, "LABELPILOT_MODEL_SEGMENT",
                                "models", "Default instance segmentation model.")
    model_pose: str = _field(TASKS["pose"].default_weights, "LABELPILOT_MODEL_POSE", "models",
                             "Default pose (keypoint) model.")
    model_obb: str = _field(TASKS["obb"].default_weights, "LABELPILOT_MODEL_OBB", "models",
                            "Default oriented-box model.")
    model_classify: str = _field(TASKS["classify"].default_weights,
                                 "LABELPILOT_MODEL_CLASSIFY", "models",
                                 "Default image classification model.")
    preload: CommaList | None = _field(
        None, "LABELPILOT_PRELOAD", "models",
        "Models each server worker loads at start (comma list). Unset: every "
        "`LABELPILOT_MODEL_<TASK>` that is set; empty: none.")
    download_weights: bool = _field(
        True, "LABELPILOT_DOWNLOAD_WEIGHTS", "models",
        "`false` stops ultralytics from downloading release weights by name.")
    allow_custom_model_path: bool = _field(
        False, "ALLOW_CUSTOM_MODEL_PATH", "models",
        "`true` lets label configs (`model_path`, `sam_model`) name any file on the backend "
        "host; otherwise only files under `MODEL_DIR` and ultralytics release names.")
    device: str = _field("", "LABELPILOT_DEVICE", "models",
                         "`cpu`, `cuda:0`, ... Empty: CUDA when present, else CPU.")
    batch_mode: Literal["auto", "loop"] = _field(
        "auto", "LABELPILOT_BATCH_MODE", "models",
        "`loop` forces one image per model call (batches measured faster on CPU too).")
    max_batch: int = _field(16, "LABELPILOT_MAX_BATCH", "models", "Images per model call.",
                            gt=0)
    max_models: int = _field(4, "LABELPILOT_MAX_MODELS", "models",
                             "YOLO models kept loaded per worker process (least recently "
                             "used dropped first).", gt=0)
    score_threshold: float = _field(
        0.25, "LABELPILOT_SCORE_THRESHOLD", "models",
        "Default confidence threshold (a control's `model_score_threshold` overrides it).",
        ge=0, le=1)
    runtime: Literal["auto", "torch", "onnx", "openvino"] = _field(
        "auto", "LABELPILOT_RUNTIME", "models",
        "What runs a served detect model: `torch`, or a version's export (`labelpilot models "
        "export`) on `onnx` / `openvino` (torch weights when it has none). `auto`: on a CPU, "
        "the version's exports are timed at load and the fastest serves; on a GPU, torch.")

    # SAM
    sam_model: str = _field(
        "", "LABELPILOT_SAM_MODEL", "sam",
        "Default SAM: a checkpoint path, `vit_b:PATH`, `mobile_sam.pt`, `sam_b.pt`, ... "
        "(a control's `sam_model` overrides it).")
    sam_decoder: Literal["auto", "torch", "onnx"] = _field(
        "auto", "LABELPILOT_SAM_DECODER", "sam",
        "Prompt decoder: `auto` times both at load and keeps the faster.")
    sam_cache_mb: float = _field(512, "LABELPILOT_SAM_CACHE_MB", "sam",
                                 "Image embeddings kept per worker process (4 MiB each).", ge=0)
    sam_max_models: int = _field(2, "LABELPILOT_SAM_MAX_MODELS", "sam",
                                 "SAM models kept loaded per worker process.", gt=0)
    sam_prewarm_queue: int = _field(32, "LABELPILOT_SAM_PREWARM_QUEUE", "sam",
                                    "Embeddings waiting to be computed ahead of clicks.", ge=0)
    sam_prewarm_tasks: int = _field(16, "LABELPILOT_SAM_PREWARM_TASKS", "sam",
                                    "Tasks of one batch `/predict` whose embeddings are "
                                    "computed ahead of clicks.", ge=0)
    sam_image_cache_mb: float = _field(128, "LABELPILOT_SAM_IMAGE_CACHE_MB", "sam",
                                       "Decoded images of recent clicks kept per worker.", ge=0)
    sam_redis_ttl: int = _field(1800, "LABELPILOT_SAM_REDIS_TTL", "sam",
                                "Seconds an embedding stays shared in Redis (0: no Redis "
                                "tier).", ge=0)
    sam_redis_mb: int = _field(1024, "LABELPILOT_SAM_REDIS_MB", "sam",
                               "Embeddings kept in Redis at most (oldest dropped first).", ge=0)

    # CVAT
    cvat_port: int = _field(
        8070, "LABELPILOT_CVAT_PORT", "cvat",
        "Port of the CVAT facade (nuclio protocol, no auth: publish it only to CVAT's "
        "network); only there, not on `PORT`. `0`: on `PORT`, behind the basic auth.",
        ge=0, lt=65536)
    cvat_host: str = _field(
        "127.0.0.1", "LABELPILOT_CVAT_HOST", "cvat",
        "Address the CVAT port and direct-mode ports bind: this machine only unless you open "
        "it (`0.0.0.0`, or the address CVAT's containers reach, e.g. the docker bridge's).")
    cvat_direct_ports: str = _field(
        "", "LABELPILOT_CVAT_DIRECT_PORTS", "cvat",
        "Port range for CVAT's direct invoke mode, e.g. `32001-32016`.")
    cvat_functions: str | None = _field(
        None, "LABELPILOT_CVAT_FUNCTIONS", "cvat",
        "Detectors from model files, `name=model` pairs, e.g. `shapes=/models/shapes.pt`. "
        "Unset: one `yolo-<task>` per `LABELPILOT_MODEL_<TASK>` that is set.")
    cvat_store_keys: str = _field(
        "cvat-*", "LABELPILOT_CVAT_STORE_KEYS", "cvat",
        "Model-store keys offered to CVAT as detectors (comma list of shell patterns; `*`: "
        "Label Studio projects' versions too).")
    cvat_sam: str = _field("", "LABELPILOT_CVAT_SAM", "cvat",
                           "SAM for the `labelpilot-sam` interactor (default: "
                           "`LABELPILOT_SAM_MODEL`; neither: no interactor).")
    cvat_tracker: bool = _field(True, "LABELPILOT_CVAT_TRACKER", "cvat",
                                "Offer the `labelpilot-tracker` function.")
    cvat_webhook_secret: SecretStr | None = _field(
        None, "LABELPILOT_CVAT_WEBHOOK_SECRET", "cvat",
        "Secret of CVAT's webhook (the server checks `X-Signature-256`).")
    cvat_url: str | None = _field(None, "CVAT_URL", "cvat",
                                  "CVAT address for training from CVAT and `connect cvat`.")
    cvat_access_token: SecretStr | None = _field(None, "CVAT_ACCESS_TOKEN", "cvat",
                                                 "CVAT API token (or user and password).")
    cvat_user: str | None = _field(None, "CVAT_USER", "cvat", "CVAT user name.")
    cvat_password: SecretStr | None = _field(None, "CVAT_PASSWORD", "cvat",
                                             "CVAT password.")
    cvat_org: str | None = _field(None, "CVAT_ORG", "cvat", "CVAT organization slug.")

    # Watching
    watch: bool = _field(
        True, "LABELPILOT_WATCH", "watch",
        "Check the quality of every predicted image and watch it for drift (`false`: "
        "predictions only; scans, acceptance and the dashboard still work).")
    drift_window: int = _field(
        50, "LABELPILOT_DRIFT_WINDOW", "watch",
        "Predicted images per drift test (per model version), compared with the version's "
        "training images.", ge=10, le=5000)
    drift_alpha: float = _field(
        0.01, "LABELPILOT_DRIFT_ALPHA", "watch",
        "Significance level of the drift test: lower raises fewer, surer retraining "
        "requests.", gt=0, lt=0.5)

    # Server
    host: str = _field("0.0.0.0", "LABELPILOT_HOST", "server", "Address `serve` binds.")
    port: int = _field(9090, "PORT", "server", "Port of the Label Studio endpoints.",
                       gt=0, lt=65536)
    workers: int = _field(2, "WORKERS", "server", "gunicorn worker processes.", gt=0)
    threads: int = _field(4, "THREADS", "server", "Threads per gunicorn worker.", gt=0)
    timeout: int = _field(120, "LABELPILOT_TIMEOUT", "server",
                          "Seconds before gunicorn restarts a stuck worker.", gt=0)
    redis_url: str | None = _field(
        None, "REDIS_URL", "server",
        "Redis for webhooks, jobs and hot-swap. Unset: `serve` starts an embedded "
        "redis-server in the data dir.")
    data_dir: Path = _field(Path(".data"), "LABELPILOT_DATA_DIR", "server",
                            "Embedded Redis data, metrics, demo files.")
    admin_token: SecretStr | None = _field(
        None, "LABELPILOT_ADMIN_TOKEN", "server",
        "Enables the `/admin/...` endpoints (`Authorization: Bearer <token>`).")
    ls_venv: Path | None = _field(
        None, "LABELPILOT_LS_VENV", "server",
        "Label Studio's own venv, for `labelpilot demo` and the tests (`./run` sets it). "
        "Unset: `.ls-venv` in the repo.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _field(
        "INFO", "LOG_LEVEL", "server", "Log level of every labelpilot process.")

    @field_validator("allowed_hosts", "preload", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("label_studio_url", "cvat_url", mode="before")
    @classmethod
    def _no_empty(cls, value: Any) -> Any:
        return None if value == "" else value

    def task_model(self, task: str) -> str:
        """The default model for a model task (detect, segment, pose, obb, classify)."""
        return str(getattr(self, f"model_{TASKS[task].name}"))

    def task_models_set(self) -> dict[str, str]:
        """The `LABELPILOT_MODEL_<TASK>` variables given explicitly, by task."""
        return {task: self.task_model(task) for task in TASKS
                if f"model_{task}" in self.model_fields_set}

    def models_to_preload(self) -> list[str]:
        """LABELPILOT_PRELOAD, else every LABELPILOT_MODEL_<TASK> that is set."""
        if self.preload is not None:
            return list(self.preload)
        return list(self.task_models_set().values())

    def with_overrides(self, **values: Any) -> Settings:
        """These settings with `values` (None: keep) validated like the environment's."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        checked = load_settings(**{**self.model_dump(), **given})  # SettingsError if bad
        # model_copy keeps which fields were given (see task_models_set) and adds these
        return self.model_copy(update={name: getattr(checked, name) for name in given})

    def env_of(self, names: Any) -> dict[str, str]:
        """Fields `names` as environment variables, for child processes."""
        out = {}
        for name in names:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, tuple):
                value = ",".join(value)
            out[_env_names(name)[0]] = "" if value is None else str(value)
        return out

    def described(self) -> list[tuple[str, str]]:
        """(variable, value) for every setting, secrets hidden."""
        out = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            shown = ("" if value is None else str(value) if not isinstance(value, tuple)
                     else ",".join(value))
            out.append((_env_names(name)[0], shown))
        return out

    @property
    def cvat_port_shared(self) -> bool:
        """The CVAT facade answers on `PORT` (LABELPILOT_CVAT_PORT 0, or equal to PORT)."""
        return self.cvat_port in (0, self.port)

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir.expanduser().resolve()

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment (and `overrides`); a bad value raises SettingsError
    naming the variable, the value and what is expected."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None


def _env_names(name: str) -> list[str]:
    field = Settings.model_fields.get(name)
    extra: dict[str, Any] = (field.json_schema_extra or {}) if field else {}  # type: ignore[assignment]
    return list(extra.get("env", [name]))


def _explain(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        lines.append(f"  {' / '.join(_env_names(name))}={error.get('input')!r}: "
                     f"{error['msg']}")
    return "\n".join(lines)


def settings_markdown() -> str:
    """The README's configuration tables, one per group (generated; a test checks the README)."""
    out: list[str] = []
    for group, title in GROUPS.items():
        out += [f"**{title}**", "", "| variable | meaning | default |", "|---|---|---|"]
        for field in Settings.model_fields.values():
            extra: dict[str, Any] = field.json_schema_extra or {}  # type: ignore[assignment]
            if extra.get("group") != group:
                continue
            names = ", ".join(f"`{n}`" for n in extra["env"])
            out.append(f"| {names} | {field.description} | {_default(field.default)} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _default(value: Any) -> str:
    if value is None or value in ("", ()):
        return "—"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, int) and value >= 2**20 and value % 2**20 == 0:
        return f"{value // 2**20} MiB"
    if isinstance(value, int) and value >= 1_000_000 and value % 1_000_000 == 0:
        return f"{value // 1_000_000} MP"
    return f"`{value}`"


def secret(value: SecretStr | None) -> str | None:
    """A secret's text, None when unset or empty."""
    return value.get_secret_value() or None if value is not None else None
