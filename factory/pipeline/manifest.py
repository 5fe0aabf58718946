"""manifest.json of a build, typed: the build's identity and one record per stage.

A stage record keeps the common fields typed and the stage's own figures (size, scores, the
push receipt) as extra fields, readable as attributes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.core.redact import scrub

MANIFEST = "manifest.json"


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["running", "done", "failed"]
    fingerprint: str
    pid: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_time_s: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None
    traceback: str | None = None

    def get(self, name: str, default: Any = None) -> Any:
        """A stage's own figure (e.g. `size_bytes`), or `default` when it has none."""
        value = getattr(self, name, None)
        return default if value is None else value


class GateRecord(BaseModel):
    passed: bool
    failures: list[str] = Field(default_factory=list)
    checked_at: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    recipe: str | None = None
    model: str | None = None
    fingerprint: str | None = None
    fingerprint_inputs: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    gates: GateRecord | None = None
    status: Literal["ok", "failed"] | None = None

    def stage(self, name: str) -> StageRecord | None:
        return self.stages.get(name)

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        """The manifest at `path`; an absent or torn one reads as empty (every stage runs again)."""
        if not path.is_file():
            return cls()
        try:
            return cls.model_validate_json(path.read_text())
        except (ValidationError, ValueError):
            return cls()

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")

        # No credential reaches the file, whatever an error message carried (factory.core.redact).
        tmp.write_text(scrub(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)) + "\n")
        os.replace(tmp, path)
