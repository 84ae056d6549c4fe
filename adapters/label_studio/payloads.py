"""Pydantic models of what Label Studio sends (see shared/research/label-studio-protocol.md).

Only the fields we use are declared; everything else LS sends is accepted and ignored, so a
newer LS adding fields never breaks us (label-studio-ml-backend #768/#874 were KeyErrors).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def project_id(value: Any) -> int | None:
    """LS sends the project as an int, a dict, or the string "{id}.{created_at}"."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    text = str(value).split(".", 1)[0]
    # ASCII digits only ("²".isdigit() is true but int() refuses it), and a size LS can have
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


class Task(_Lenient):
    id: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ContextRegion(_Lenient):
    """One clicked/drawn region in an interactive request (percent coordinates)."""

    type: str
    value: dict[str, Any] = Field(default_factory=dict)
    from_name: str | None = None
    to_name: str | None = None
    original_width: int | None = None
    original_height: int | None = None
    is_positive: bool = True


class Context(_Lenient):
    result: list[ContextRegion] = Field(default_factory=list)


class Params(_Lenient):
    context: Context | None = None


class PredictRequest(_Lenient):
    tasks: list[Task] = Field(min_length=1)
    project: Any = None
    label_config: str | None = None
    params: Params | None = None

    @property
    def project_id(self) -> int | None:
        return project_id(self.project)


class SetupRequest(_Lenient):
    project: Any = None
    schema_: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None

    @property
    def project_id(self) -> int | None:
        return project_id(self.project)


TRAINING_ACTIONS = frozenset(
    {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED",
     "START_TRAINING"}
)


class WebhookEvent(_Lenient):
    """A webhook; the shape differs per action (START_TRAINING has no annotation or task)."""

    action: str
    project: dict[str, Any] | None = None
    annotation: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] | None = None
    task: dict[str, Any] | None = None

    @field_validator("action")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper()

    @property
    def project_id(self) -> int | None:
        pid = project_id(self.project)
        if pid is None and self.annotation:
            pid = project_id(self.annotation.get("project"))
        return pid

    def check_for_training(self) -> None:
        """Raise ValueError naming what is missing for a training event of this action."""
        if self.project_id is None:
            raise ValueError(f"{self.action} webhook has no project id ('project.id')")
        if self.action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") and not self.annotation:
            raise ValueError(f"{self.action} webhook has no 'annotation' object")
