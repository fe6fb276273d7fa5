"""Replay fixtures: the Temporal histories of real runs, every payload decoded (readable, reviewable
as a diff, and replayable whatever the codec key), one JSON file per scenario. ``record.py`` makes
them; ``tests/test_replay.py`` replays every one against the current workflow code.

A file: ``{"scenario", "about", "recorded_with": {...}, "workflows": [{"workflow_id", "run_id",
"type", "status", "history": <WorkflowHistory JSON>}]}``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

HERE = Path(__file__).parent
# The recorded payloads are decoded: replay them with Quire's converter minus the codec (failure
# messages still travel in their encoded attributes, now in clear).
REPLAY_CONVERTER = dataclasses.replace(
    DataConverter.default, failure_converter_class=DefaultFailureConverterWithEncodedAttributes
)


def fixture_files() -> list[Path]:
    return sorted(HERE.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def histories(fixture: dict[str, Any]) -> list[WorkflowHistory]:
    return [WorkflowHistory.from_json(w["workflow_id"], w["history"]) for w in fixture["workflows"]]
