"""Every recorded history (tests/histories: real runs of each kind of job) replays against the current
workflow code with Temporal's Replayer, as a worker would replay it after a deploy; a workflow whose
commands changed without ``workflow.patched`` does not, and the same change behind a patch does.

Re-record the fixtures with ``.venv/bin/python -m tests.histories.record`` (README: "Changing
workflow code safely" says when that is right, and when it would hide the very break this catches).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, WorkflowReplayResults
from temporalio.workflow import NondeterminismError

from tests.histories import REPLAY_CONVERTER, fixture_files, histories, load
from workflows.edit import EditWorkflow
from workflows.job import JobWorkflow
from workflows.steps import QUICK, step
from workflows.unit import UnitInput, UnitWorkflow
from workflows.webhook import WebhookWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.chunks import ChunkActivities
    from activities.contracts import NodeRef

WORKFLOWS = [JobWorkflow, UnitWorkflow, WebhookWorkflow, EditWorkflow]
# Every scenario tests/histories/record.py records. Add plan_review and regenerated_chapter here
# when they exist (see the note in record.py).
EXPECTED = {"generate", "rewrite", "resumed", "cancelled", "plan_review", "regenerated_chapter"}


async def replay(fixture: dict[str, Any], workflows: list[type]) -> WorkflowReplayResults:
    async def each() -> AsyncIterator[WorkflowHistory]:
        for history in histories(fixture):
            yield history

    replayer = Replayer(workflows=workflows, data_converter=REPLAY_CONVERTER)
    return await replayer.replay_workflows(each(), raise_on_replay_failure=False)


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.stem)
async def test_every_recorded_history_replays_on_the_current_code(path):
    fixture = load(path)
    results = await replay(fixture, WORKFLOWS)
    failed = {run_id: f"{type(e).__name__}: {e}" for run_id, e in results.replay_failures.items()}
    assert not failed, f"{path.name}: these runs no longer replay (see README: Changing workflow code safely): {failed}"


def test_the_fixtures_hold_every_scenario_and_every_kind_of_run():
    assert {p.stem for p in fixture_files()} == EXPECTED
    runs = [w for p in fixture_files() for w in load(p)["workflows"]]
    assert {w["type"] for w in runs} == {"JobWorkflow", "UnitWorkflow", "WebhookWorkflow", "EditWorkflow"}
    # Runs that ended every way a run ends: finished, continued as new, failed, cancelled (their
    # children terminated with them).
    assert {"COMPLETED", "CONTINUED_AS_NEW", "FAILED", "CANCELED", "TERMINATED"} <= {w["status"] for w in runs}
    assert any(w["workflow_id"].endswith("-r2") for w in runs), "a resumed run"
    # Parallel chapters: the generate job started a second chapter before the first one ended.
    job = next(w for w in runs if w["type"] == "JobWorkflow" and w["workflow_id"] == _generate_job_id())
    kinds = [next(k for k in e if k.endswith("EventAttributes")) for e in job["history"]["events"]]
    first_end = kinds.index("childWorkflowExecutionCompletedEventAttributes")
    assert kinds[:first_end].count("startChildWorkflowExecutionInitiatedEventAttributes") >= 2
    # Decoded: no payload of a fixture is still encrypted (they replay whatever the codec's key).
    assert all("YmluYXJ5L2VuY3J5cHRlZA" not in json.dumps(load(p)) for p in fixture_files())  # b64 of binary/encrypted


def _generate_job_id() -> str:
    return str(load(next(p for p in fixture_files() if p.stem == "generate"))["workflows"][0]["workflow_id"])


@workflow.defn(name="UnitWorkflow")
class UnitWithANewFirstStep(UnitWorkflow):
    """UnitWorkflow as a change might leave it: one more activity before the unit is planned, with
    no patch. Histories written by the code before it expect ``expand_node`` first."""

    @workflow.run
    async def run(self, inp: UnitInput) -> int:
        await step(ChunkActivities.unit_chunks, NodeRef(inp.job_id, inp.unit_id), QUICK, "a new first step")
        return await super().run(inp)


@workflow.defn(name="UnitWorkflow")
class UnitWithANewPatchedStep(UnitWorkflow):
    """The same change behind ``workflow.patched``: a run that started before it replays the old way."""

    @workflow.run
    async def run(self, inp: UnitInput) -> int:
        if workflow.patched("unit-new-first-step"):
            await step(ChunkActivities.unit_chunks, NodeRef(inp.job_id, inp.unit_id), QUICK, "a new first step")
        return await super().run(inp)


async def test_a_changed_command_sequence_without_a_patch_fails_replay_and_with_one_passes():
    fixture = load(next(p for p in fixture_files() if p.stem == "generate"))
    units = {w["run_id"] for w in fixture["workflows"] if w["type"] == "UnitWorkflow"}
    assert len(units) >= 4  # chapters, and the runs they continued as

    changed = await replay(fixture, [JobWorkflow, UnitWithANewFirstStep, WebhookWorkflow])
    broken = {run_id for run_id, e in changed.replay_failures.items() if isinstance(e, NondeterminismError)}
    # Every unit run (a continued one too) starts by planning its unit: none recorded the new step.
    assert broken == units, {k: str(v) for k, v in changed.replay_failures.items()}

    patched = await replay(fixture, [JobWorkflow, UnitWithANewPatchedStep, WebhookWorkflow])
    assert not patched.replay_failures, {k: str(v) for k, v in patched.replay_failures.items()}
