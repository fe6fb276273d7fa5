"""The author's loop, as commands: approve a plan (as is or edited) through the job workflow's
Update, start an edit of a finished job (regenerate, hand edit, rewrite a selection, roll back)
as a workflow of its own, lock and unlock nodes. Each checks what makes no sense first and says so
(``Refused``: 404 no such node, 409 a job or node in the wrong state or locked, 422 a bad edit, 429
a quota), then records the action in the job's audit log with who asked, in the same transaction
as the rows it writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError

from core import review as rules
from core.edits import heading_problem, locate, node_text, spans
from core.quota import submit_refusal
from core.runs import edit_workflow_id
from core.scope import boundary_problems
from core.spec import JobOptions
from core.text import count_words
from db import usage
from db.loop import Edit, PlanVersion
from db.manuscript import PlanNode
from db.models import Job, LlmCall
from db.session import Database, JobTx
from db.tree import chunks_under, latest_text, latest_version, lock_message, lock_over, outline
from services.deploys import job_priority
from services.jobs import search_attributes
from services.temporal import llm_task_queue
from workflows.edit import EditInput, EditWorkflow
from workflows.job import JobWorkflow, PlanReviewInput
from workflows.steps import Durability

WHY_NOT = {
    "queued": "job is queued: it has not been written yet",
    "running": "job is running: edit its chapters once it has succeeded",
    "failed": "job failed: resume it (POST /v1/jobs/{id}/resume) before editing it",
    "cancelled": "job is cancelled: resume it (POST /v1/jobs/{id}/resume) before editing it",
}


class Refused(Exception):
    """An action that makes no sense now: the HTTP status to answer and what to say."""

    def __init__(self, status: int, detail: Any, retry_after: int | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else "invalid")
        self.status, self.detail, self.retry_after = status, detail, retry_after


# -- plan review ----------------------------------------------------------------------------------


async def review_plan(
    db: Database, client: Client, job: Job, review: rules.PlanReview, actor: dict[str, Any]
) -> dict[str, Any]:
    """Propose the outline (``review.items``, or the plan as it is) as the plan's next version and
    send it to the job's workflow as an Update; answers the version the workflow applied."""
    async with db.job_tx(job.id) as tx:
        j = await _locked_job(tx)
        if not JobOptions(**(j.params or {})).review_plan:
            raise Refused(409, "job did not ask for a plan review (options.review_plan)")
        latest = await latest_version(tx)
        if j.status != "running" or latest is None or latest.status in ("approved", "proposed"):
            state = (
                f"job is {j.status}" if j.status != "running" else
                "its plan is not planned yet" if latest is None else
                f"plan version {latest.version} is {'being applied' if latest.status == 'proposed' else 'approved'}"
            )  # fmt: skip
            raise Refused(409, f"the plan is not waiting for review: {state}")
        current = await outline(tx.session, tx.job_id)
        if review.items is None:
            new = current
        else:
            problems = rules.problems(review.items, current, j.target_words, j.max_words)
            if problems:
                raise Refused(422, problems)
            new = rules.outline_of(review.items, current)
        diff = rules.changes(current, new)
        version = latest.version + 1
        tx.session.add(
            PlanVersion(
                job_id=j.id, version=version, status="proposed", outline=new, changes=diff, user_name=actor["user"]
            )
        )
        tx.event("user", "review_plan", {**actor, "version": version, "as_is": not diff, "changes": diff})
    budgets = [i["budget_words"] for i in new]
    try:
        applied = await client.get_workflow_handle(job.workflow_id).execute_update(
            JobWorkflow.review_plan, PlanReviewInput(version, budgets)
        )
    except (WorkflowUpdateFailedError, RPCError) as exc:
        why = str(exc.cause) if isinstance(exc, WorkflowUpdateFailedError) and exc.cause else str(exc)
        async with db.job_tx(job.id) as tx:
            pv = (
                await tx.session.execute(
                    select(PlanVersion).where(PlanVersion.job_id == job.id, PlanVersion.version == version)
                )
            ).scalar_one()
            pv.status, pv.reason, pv.decided_at = "rejected", why[:1000], dt.datetime.now(dt.UTC)
            tx.event("plan", "rejected", {"version": version, "reason": why})
        raise Refused(409, f"the job's workflow refused plan version {version}: {why}") from None
    return {"version": applied, "changes": diff, "items": new}


# -- edits ------------------------------------------------------------------------------------------


async def start_edit(
    db: Database,
    client: Client,
    job: Job,
    node_id: int,
    kind: str,
    actor: dict[str, Any],
    *,
    task_queue: str,
    durability: Durability,
    params: dict[str, Any] | None = None,
    text: str | None = None,
) -> Edit:
    """Check an edit of ``node_id`` and start its workflow (``job-<id>-e<n>``): the edit's row
    and the request's audit event in one transaction, then the workflow."""
    params = dict(params or {})
    async with db.job_tx(job.id) as tx:
        j = await _locked_job(tx)
        if j.status != "succeeded":
            raise Refused(409, WHY_NOT.get(j.status, f"job is {j.status}").replace("{id}", str(j.id)))
        node = await node_of(tx, node_id)
        await _not_busy(tx, node)
        locked = await lock_over(tx.session, node)
        if locked is not None:
            raise Refused(409, lock_message(locked, node))
        words = await _check_params(tx, node, kind, params, text)
        await _within_limits(tx, j, words)
        number = (
            1
            + (
                await tx.session.execute(select(func.coalesce(func.max(Edit.number), 0)).where(Edit.job_id == j.id))
            ).scalar_one()
        )
        edit = Edit(
            job_id=j.id,
            number=number,
            kind=kind,
            node_id=node.id,
            user_name=actor["user"],
            params=params,
            text=text,
            words=words,
            workflow_id=edit_workflow_id(j.id, number),
        )
        tx.session.add(edit)
        await tx.session.flush()
        shown = {k: v for k, v in params.items() if k != "text"}
        tx.event(
            "user",
            kind,
            {**actor, "edit": number, "node": node.id, "level": node.level, "title": node.title, **shown,
             **({"words": count_words(text)} if text is not None else {})},
        )  # fmt: skip
        user_name = actor["user"]
    await client.start_workflow(
        EditWorkflow.run,
        EditInput(str(job.id), edit.id, number, llm_task_queue(task_queue), durability),
        id=edit.workflow_id,
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        priority=job_priority(job.user_id),  # an edit's model calls share the queue fairly, as its job's
        search_attributes=search_attributes(job, user_name),
        static_summary=f"edit {number}: {kind} of node {node_id}",
    )
    return edit


async def node_of(tx: JobTx, node_id: int) -> PlanNode:
    """A node of the job that an author may act on (404 if the job has none such; 409 the book)."""
    node = await tx.session.get(PlanNode, node_id)
    if node is None or node.job_id != tx.job_id:
        raise Refused(404, f"job {tx.job_id} has no node {node_id}")
    if node.level == "book":
        raise Refused(409, f"node {node_id} is the whole book: act on its chapters or sections")
    return node


async def _locked_job(tx: JobTx) -> Job:
    job = await tx.session.get(Job, tx.job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise Refused(404, f"no job {str(tx.job_id)!r}")
    return job


async def _not_busy(tx: JobTx, node: PlanNode) -> None:
    """409 while an edit of the job runs: its node is being written, and the document with it."""
    running = (
        await tx.session.execute(select(Edit).where(Edit.job_id == tx.job_id, Edit.status == "running"))
    ).scalar_one_or_none()
    if running is None:
        return
    other = await tx.session.get(PlanNode, running.node_id)
    what = f"{other.level} {other.id} '{other.title}'" if other is not None else "a node"
    same = "this node" if running.node_id == node.id else "the document"
    raise Refused(409, f"edit {running.number} ({running.kind} of {what}) is running on {same}: wait for it to end")


async def _check_params(tx: JobTx, node: PlanNode, kind: str, params: dict[str, Any], text: str | None) -> int:
    """A 422 for an edit that cannot be made (a text with headings or unchanged, a selection not
    found, a version that does not exist); returns the words it asks the model to write."""
    chunks = await chunks_under(tx.session, node)
    if any(c.status != "done" for c in chunks) or not chunks:
        raise Refused(409, f"{node.level} {node.id} '{node.title}' is not written: it has nothing to edit")
    texts = [await latest_text(tx.session, c.id) for c in chunks]
    if kind == "regenerate":
        return node.budget_words
    if kind == "edit":
        assert text is not None
        problem = heading_problem(text) or ("the text is empty" if not text.strip() else None)
        if problem is None and boundary_problems(text):  # a passage never starts or ends mid-sentence
            problem = "the text " + " and ".join(boundary_problems(text)) + ": send whole sentences"
        if problem is None and " ".join(text.split()) == " ".join(node_text(texts).split()):
            problem = "the text is the node's text as it stands: nothing to change"
        if problem:
            raise Refused(422, [{"loc": ["body", "text"], "msg": problem, "type": "text"}])
        return 0
    if kind == "rewrite":
        try:
            start, end = locate(
                node_text(texts), quote=params.pop("quote", None), start=params.get("start"), end=params.get("end")
            )
        except ValueError as exc:
            raise Refused(422, [{"loc": ["body", "quote"], "msg": str(exc), "type": "selection"}]) from None
        if len({chunks[sp.index].section_id for sp in spans(texts, start, end)}) > 1:
            msg = "the selection runs from one section into the next: select within one section"
            raise Refused(422, [{"loc": ["body", "quote"], "msg": msg, "type": "selection"}])
        params.update(start=start, end=end, selected=node_text(texts)[start:end][:2000])
        return count_words(node_text(texts)[start:end])
    to = int(params["to"])
    if to and to not in await node_versions(tx, node):
        raise Refused(
            404, f"{node.level} {node.id} has no version {to}: 0 (as the job wrote it) or an edit that changed it"
        )
    return 0


async def node_versions(tx: JobTx, node: PlanNode) -> list[int]:
    """The edits (numbers) that changed a node: the versions it can be rolled back to (and 0)."""
    ids = {str(c.id) for c in await chunks_under(tx.session, node)}
    done = (await tx.session.execute(select(Edit).where(Edit.job_id == tx.job_id, Edit.status == "done"))).scalars()
    return sorted(e.number for e in done if ids & set(e.detail.get("after", {})))


async def _within_limits(tx: JobTx, job: Job, words: int) -> None:
    """The same quota check as a submit (429), and the job's token budget (409)."""
    now = dt.datetime.now(dt.UTC)
    quotas = await usage.quotas(tx.session, job.user_id, lock=True)
    if quotas.any:
        refused = submit_refusal(quotas, await usage.usage(tx.session, job.user_id, now), words, now)
        if refused is not None:
            raise Refused(429, str(refused), refused.retry_after_s)
    opts = JobOptions(**(job.params or {}))  # an edit's time budget is its own (db.loop.clock_start)
    if opts.max_tokens is not None:
        used = (
            await tx.session.execute(
                select(
                    func.coalesce(func.sum(LlmCall.tokens_in), 0) + func.coalesce(func.sum(LlmCall.tokens_out), 0)
                ).where(LlmCall.job_id == job.id)
            )
        ).scalar_one()
        if used >= opts.max_tokens:
            raise Refused(409, f"the job's token budget (max_tokens={opts.max_tokens}) is used up ({used} tokens)")


# -- locks -------------------------------------------------------------------------------------------


async def set_lock(db: Database, job: Job, node_id: int, locked: bool, actor: dict[str, Any]) -> PlanNode:
    """Lock (or unlock) a written node: no regeneration or repair touches it while it is locked."""
    async with db.job_tx(job.id) as tx:
        j = await _locked_job(tx)
        if j.status not in ("running", "succeeded"):
            raise Refused(409, f"job is {j.status}: only a running or finished job's nodes are locked")
        node = await node_of(tx, node_id)
        if locked and any(c.status != "done" for c in await chunks_under(tx.session, node)):
            raise Refused(409, f"{node.level} {node.id} '{node.title}' is not written yet: lock what is done")
        running = (
            await tx.session.execute(select(Edit).where(Edit.job_id == j.id, Edit.status == "running"))
        ).scalar_one_or_none()
        if running is not None:
            raise Refused(409, f"edit {running.number} is running: lock or unlock once it has ended")
        if (node.locked_at is not None) != locked:
            node.locked_at = dt.datetime.now(dt.UTC) if locked else None
            node.locked_by = actor["user"] if locked else None
            tx.event(
                "user",
                "lock" if locked else "unlock",
                {**actor, "node": node.id, "level": node.level, "title": node.title},
            )
        return node
