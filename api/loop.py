"""/v1 routes of the author's loop: review the plan, act on a node of a finished job (regenerate,
edit by hand, rewrite a selection, roll back, lock), follow the edits, read the document's
versions and their diff, see the book as a map, and estimate a job before running it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from temporalio.client import Client

from api import actions
from api.deps import Caller, CallerDep, ClientDep, DbDep, OwnJobDep, SettingsDep
from api.intake import read_spec
from api.loop_schemas import (
    BookMap,
    Diff,
    EditStarted,
    EditView,
    Estimate,
    JobEstimate,
    LockView,
    NodeText,
    NodeView,
    PlanApplied,
    PlanView,
    Regenerate,
    Rewrite,
    Rollback,
    Versions,
)
from api.schemas import COMMON, ERRORS
from core.review import PlanReview
from db.models import Job
from db.session import Database
from services import estimate as estimates
from services import jobs as job_service
from services import loop, loopviews
from services.config import Settings

router = APIRouter(prefix="/v1", tags=["author's loop"], responses=COMMON)
# Included before the job routes: /v1/jobs/estimate is not a job (GET /v1/jobs/{job_id} would take it).
estimates_router = APIRouter(prefix="/v1", tags=["jobs"], responses=COMMON)

NodeId = Annotated[int, Path(ge=1, le=2**62, description="a node of the job's plan (GET .../map or .../plan)")]
Number = Annotated[int, Path(ge=1, le=2**31 - 1, description="the edit's number in the job")]
CONFLICT = {**ERRORS[404], "description": "the job or node is in no state for it (each message says why), or locked"}
NOT_FOUND = {**ERRORS[404], "description": "no such job, node or version for this caller"}
EDIT_RESPONSES: dict[int | str, dict[str, Any]] = {404: NOT_FOUND, 409: CONFLICT, 422: ERRORS[422], 429: ERRORS[429]}


@dataclass
class Acting:
    """Who acts on which job, through which request, with the app's services: what an action needs."""

    request: Request
    job: Job
    who: Caller
    db: Database
    client: Client
    settings: Settings

    @property
    def actor(self) -> dict[str, Any]:
        return actions.actor(self.request, self.who)


async def _acting(
    request: Request, job: OwnJobDep, who: CallerDep, db: DbDep, client: ClientDep, settings: SettingsDep
) -> Acting:
    return Acting(request, job, who, db, client, settings)


ActingDep = Annotated[Acting, Depends(_acting)]


def _refused(exc: loop.Refused) -> HTTPException:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return HTTPException(exc.status, exc.detail, headers=headers)


@router.get(
    "/jobs/{job_id}/plan",
    response_model=PlanView,
    summary="The plan's outline, its versions, and whether it awaits review",
    responses={404: NOT_FOUND},
)
async def get_plan(job: OwnJobDep, db: DbDep) -> dict[str, Any]:
    return await loopviews.plan(db, job)


@router.post(
    "/jobs/{job_id}/plan",
    response_model=PlanApplied,
    summary="Approve the plan of a job waiting for review, as is or edited",
    description="No `items`: approve the plan as it is. With `items`: the whole outline as it should be, in order: "
    "existing top-level nodes by `node` (edited or not), new ones without; a node left out is removed. Budgets must "
    "sum to at least the job's target (and at most its maximum). The edit is stored as the plan's next version and "
    "sent to the job's workflow as a Temporal Update, validated before it is accepted; the answer is the version it "
    "applied. The job then writes the plan as approved.",
    responses={404: NOT_FOUND, 409: CONFLICT, 422: ERRORS[422]},
)
async def review_plan(body: PlanReview, a: ActingDep) -> dict[str, Any]:
    try:
        return await loop.review_plan(a.db, a.client, a.job, body, a.actor)
    except loop.Refused as exc:
        raise _refused(exc) from None


@router.get(
    "/jobs/{job_id}/nodes/{node_id}",
    response_model=NodeView,
    summary="A node: its text, words against budget, lock, versions and edits",
    responses={404: NOT_FOUND},
)
async def get_node(node_id: NodeId, job: OwnJobDep, db: DbDep) -> dict[str, Any]:
    view = await loopviews.node(db, job, node_id)
    if view is None:
        raise HTTPException(404, f"job {job.id} has no node {node_id}")
    return view


async def _edit(a: Acting, node_id: int, kind: str, **kw: Any) -> EditStarted:
    try:
        edit = await loop.start_edit(
            a.db,
            a.client,
            a.job,
            node_id,
            kind,
            a.actor,
            task_queue=a.settings.temporal_task_queue,
            durability=job_service.durability(a.settings),
            **kw,
        )
    except loop.Refused as exc:
        raise _refused(exc) from None
    return EditStarted(
        number=edit.number,
        kind=kind,
        node=node_id,
        status="running",
        workflow_id=edit.workflow_id,
        link=f"/v1/jobs/{a.job.id}/edits/{edit.number}",
    )


@router.post(
    "/jobs/{job_id}/nodes/{node_id}/regenerate",
    status_code=202,
    response_model=EditStarted,
    summary="Write a node (chapter or section) of a finished job again, with an optional instruction",
    description="New versions of its chunks (the old kept), its memory updated, its seams with both neighbours "
    "checked again (the next node repaired as a seam is, unless locked), later chapters that relied on what changed "
    "flagged in the coherence report, and a new version of the document (topped up if it fell short of the target).",
    responses=EDIT_RESPONSES,
)
async def regenerate(node_id: NodeId, body: Regenerate, a: ActingDep) -> EditStarted:
    return await _edit(a, node_id, "regenerate", params={"instruction": body.instruction} if body.instruction else {})


@router.put(
    "/jobs/{job_id}/nodes/{node_id}/text",
    status_code=202,
    response_model=EditStarted,
    summary="Replace a node's text by hand (Markdown, no headings)",
    description="The text is cut back into the node's chunks where their words fall, each changed chunk a new "
    "version, counted, read by the model into the story memory and checked against what came before (reported, never "
    "rewritten); its seams are checked; a document shorter than the target is extended.",
    responses=EDIT_RESPONSES,
)
async def put_text(node_id: NodeId, body: NodeText, a: ActingDep) -> EditStarted:
    return await _edit(a, node_id, "edit", text=body.text)


@router.post(
    "/jobs/{job_id}/nodes/{node_id}/rewrite",
    status_code=202,
    response_model=EditStarted,
    summary="Rewrite a selection inside a node with an instruction, the rest untouched",
    responses=EDIT_RESPONSES,
)
async def rewrite(node_id: NodeId, body: Rewrite, a: ActingDep) -> EditStarted:
    return await _edit(a, node_id, "rewrite", params={k: v for k, v in body.model_dump().items() if v is not None})


@router.post(
    "/jobs/{job_id}/nodes/{node_id}/rollback",
    status_code=202,
    response_model=EditStarted,
    summary="Roll a node back to an earlier version, with the memory derived from it",
    responses=EDIT_RESPONSES,
)
async def rollback(node_id: NodeId, body: Rollback, a: ActingDep) -> EditStarted:
    return await _edit(a, node_id, "rollback", params={"to": body.to})


async def _lock(a: Acting, node_id: int, locked: bool) -> LockView:
    try:
        node = await loop.set_lock(a.db, a.job, node_id, locked, a.actor)
    except loop.Refused as exc:
        raise _refused(exc) from None
    return LockView(
        node=node.id,
        locked=node.locked_at is not None,
        locked_by=node.locked_by,
        locked_at=node.locked_at.isoformat() if node.locked_at else None,
    )


@router.put(
    "/jobs/{job_id}/nodes/{node_id}/lock",
    response_model=LockView,
    summary="Lock a written node: no regeneration or repair touches it (an attempt is a 409 naming the lock)",
    responses={404: NOT_FOUND, 409: CONFLICT},
)
async def lock(node_id: NodeId, a: ActingDep) -> LockView:
    return await _lock(a, node_id, True)


@router.delete(
    "/jobs/{job_id}/nodes/{node_id}/lock",
    response_model=LockView,
    summary="Unlock a node",
    responses={404: NOT_FOUND, 409: CONFLICT},
)
async def unlock(node_id: NodeId, a: ActingDep) -> LockView:
    return await _lock(a, node_id, False)


@router.get(
    "/jobs/{job_id}/edits",
    response_model=list[EditView],
    summary="Who changed what: the job's edits",
    responses={404: NOT_FOUND},
)
async def list_edits(
    job: OwnJobDep, db: DbDep, node: Annotated[int | None, Query(ge=1, le=2**62, description="one node's")] = None
) -> list[dict[str, Any]]:
    return await loopviews.edits(db, job, node)


@router.get(
    "/jobs/{job_id}/edits/{number}",
    response_model=EditView,
    summary="One edit: its state and outcome",
    responses={404: NOT_FOUND},
)
async def get_edit(number: Number, job: OwnJobDep, db: DbDep) -> dict[str, Any]:
    view = await loopviews.edit(db, job, number)
    if view is None:
        raise HTTPException(404, f"job {job.id} has no edit {number}")
    return view


@router.get(
    "/jobs/{job_id}/versions",
    response_model=Versions,
    summary="The document's versions and who made each",
    responses={404: NOT_FOUND},
)
async def list_versions(job: OwnJobDep, db: DbDep) -> Versions:
    return Versions.model_validate({"job_id": str(job.id), "items": await loopviews.versions(db, job)})


@router.get(
    "/jobs/{job_id}/diff",
    response_model=Diff,
    summary="What changed between two versions of the document (a unified diff)",
    responses={404: NOT_FOUND},
)
async def get_diff(
    job: OwnJobDep,
    db: DbDep,
    a: Annotated[int, Query(alias="from", ge=1, le=2**31 - 1, description="the older version")],
    b: Annotated[int, Query(alias="to", ge=1, le=2**31 - 1, description="the newer version")],
) -> dict[str, Any]:
    d = await loopviews.diff(db, job, a, b)
    if d is None:
        missing = a if await loopviews.document(db, job.id, a) is None else b
        raise HTTPException(404, f"job {job.id} has no output version {missing}")
    return d


@router.get(
    "/jobs/{job_id}/map",
    response_model=BookMap,
    summary="The book at a glance: chapters as tiles, live",
    responses={404: NOT_FOUND},
)
async def get_map(job: OwnJobDep, db: DbDep) -> dict[str, Any]:
    return await loopviews.book_map(db, job)


@estimates_router.post(
    "/jobs/estimate",
    response_model=Estimate,
    summary="Estimate a job before running it: calls, tokens, cost and wall time, with a range",
    description="The same body as POST /v1/jobs; nothing is stored or started. From the plan's shape, what this model "
    "did on finished jobs (yours first: calls per passage, chapter and job for every kind of call, the story memory's "
    "included; tokens per call; seconds per call; its compliance with asked lengths), QUIRE_PRICES and parallelism.",
    responses={413: ERRORS[413], 415: ERRORS[415], 422: ERRORS[422]},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
        }
    },
)
async def estimate(request: Request, who: CallerDep, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    spec, _ = await read_spec(request, settings.quire_max_input_bytes, settings.allowed_models)
    return await estimates.for_spec(db, settings, who.user_id, spec)


@router.get(
    "/jobs/{job_id}/estimate",
    response_model=JobEstimate,
    summary="The job's estimate (as made at submit) beside what it actually used",
    responses={404: NOT_FOUND},
)
async def job_estimate(job: OwnJobDep, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    return await estimates.for_job(db, settings, job)


@estimates_router.api_route(
    "/jobs/estimate", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False
)
async def estimate_other_methods(request: Request) -> JSONResponse:
    """Only POST: not a job's id (which GET and DELETE would otherwise take it for)."""
    return JSONResponse(
        {"detail": f"method {request.method} is not allowed here; allowed: POST"},
        status_code=405,
        headers={"Allow": "POST"},
    )
