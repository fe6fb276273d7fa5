"""Submitting a job: validate, persist (job + input document + first audit events, one
transaction), then start its workflow ``job-<id>``. Shared by the API and the tests."""

from __future__ import annotations

import math
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.text import count_words, sha256
from db.models import Document, Job
from db.session import Database
from quire.temporal import SA_JOB_ID, SA_KIND, SA_TARGET_WORDS, SA_USER, workflow_id
from workflows.job import JobInput

MAX_TARGET_WORDS = 500_000


class JobOptions(BaseModel):
    """Per-job knobs; every one has a sane default."""

    model_config = ConfigDict(extra="forbid")
    max_overshoot: float = Field(1.1, ge=1.0, le=3.0, description="output stays <= target x this")
    chunk_words: int = Field(700, ge=50, le=3000, description="words per chunk (one model call)")
    max_attempts_per_chunk: int = Field(8, ge=1, le=20, description="write + extends per chunk")
    max_rounds: int = Field(8, ge=0, le=50, description="finalize top-up rounds before failing")
    max_tokens: int | None = Field(None, ge=1, description="stop when the job has used this many tokens")
    max_wall_seconds: int = Field(7 * 24 * 3600, ge=1, description="stop after this long")
    stitch_repairs_with_model: bool = Field(True, description="bridge broken seams with the model")


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["generate", "rewrite"]
    target_words: int = Field(ge=1, le=MAX_TARGET_WORDS, strict=True)
    prompt: str | None = Field(None, max_length=20_000)
    input_text: str | None = None
    title: str | None = Field(None, max_length=500)
    model: str | None = Field(None, max_length=200)
    options: JobOptions = Field(default_factory=JobOptions)

    @model_validator(mode="after")
    def _kind_needs(self) -> JobSpec:
        if self.kind == "generate" and not (self.prompt and self.prompt.strip()):
            raise ValueError("kind 'generate' needs a non-empty 'prompt'")
        if self.kind == "rewrite":
            if not (self.input_text and self.input_text.strip()):
                raise ValueError("kind 'rewrite' needs a non-empty 'input_text' (or an uploaded file)")
            if count_words(self.input_text) > MAX_TARGET_WORDS:
                raise ValueError(f"input_text has more than {MAX_TARGET_WORDS} words")
        return self

    @property
    def max_words(self) -> int:
        return max(self.target_words, math.floor(self.target_words * self.options.max_overshoot))


async def find_by_idempotency_key(db: Database, user_id: int, key: str) -> Job | None:
    async with db.tx() as s:
        return (
            await s.execute(select(Job).where(Job.user_id == user_id, Job.idempotency_key == key))
        ).scalar_one_or_none()


async def submit(
    db: Database,
    client: Client,
    *,
    user_id: int,
    user_name: str,
    spec: JobSpec,
    task_queue: str,
    default_model: str,
    idempotency_key: str | None = None,
    filename: str | None = None,
) -> tuple[Job, bool]:
    """Create and start a job; returns (job, created). An existing Idempotency-Key returns the
    job it made (starting its workflow if an earlier attempt could not)."""
    if idempotency_key:
        existing = await find_by_idempotency_key(db, user_id, idempotency_key)
        if existing is not None:
            await start_workflow(client, existing, user_name, task_queue)
            return existing, False
    job_id = uuid.uuid4()
    try:
        async with db.job_tx(job_id) as tx:
            job = Job(
                id=job_id,
                user_id=user_id,
                kind=spec.kind,
                status="queued",
                title=spec.title,
                prompt=spec.prompt,
                target_words=spec.target_words,
                max_words=spec.max_words,
                model=spec.model or default_model,
                params=spec.options.model_dump(),
                idempotency_key=idempotency_key,
                workflow_id=workflow_id(job_id),
            )
            tx.session.add(job)
            await tx.session.flush()
            if spec.kind == "rewrite":
                assert spec.input_text is not None
                tx.session.add(
                    Document(
                        job_id=job_id,
                        role="input",
                        version=1,
                        filename=filename,
                        text=spec.input_text,
                        sha256=sha256(spec.input_text),
                        word_count=count_words(spec.input_text),
                    )
                )
            tx.event(
                "job",
                "created",
                {
                    "kind": spec.kind,
                    "target_words": spec.target_words,
                    "max_words": spec.max_words,
                    "model": job.model,
                    "options": spec.options.model_dump(),
                    "user": user_name,
                    "input_words": count_words(spec.input_text or ""),
                },
            )
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race.
        if idempotency_key:
            existing = await find_by_idempotency_key(db, user_id, idempotency_key)
            if existing is not None:
                return existing, False
        raise
    await start_workflow(client, job, user_name, task_queue)
    return job, True


async def start_workflow(client: Client, job: Job, user_name: str, task_queue: str) -> None:
    if job.status != "queued":
        return
    try:
        await client.start_workflow(
            "JobWorkflow",
            JobInput(job_id=str(job.id)),
            id=job.workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_JOB_ID, str(job.id)),
                    SearchAttributePair(SA_KIND, job.kind),
                    SearchAttributePair(SA_USER, user_name),
                    SearchAttributePair(SA_TARGET_WORDS, job.target_words),
                ]
            ),
            static_summary=f"{job.kind} {job.target_words} words: {(job.title or job.prompt or '')[:80]}",
        )
    except WorkflowAlreadyStartedError:
        pass


def job_public(job: Job) -> dict[str, Any]:
    return {"id": str(job.id), "status": job.status, "workflow_id": job.workflow_id}
