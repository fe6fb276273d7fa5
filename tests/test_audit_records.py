"""What the audit log records: rolled-back work stays in the log with its error (a rejected write,
a lost connection), retried steps add no events, and user actions are logged with who, from where
and when. The log as proof (its hash chain, tampering caught): test_audit_chain.py."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from activities.contracts import JobRef, RoundRef
from activities.finalize import FinalizeActivities
from activities.plan import PlanActivities
from core.errors import LlmUnavailable
from db.manuscript import Chunk, CoherenceState, PlanNode
from services import logreader
from testkit import make_job
from tests.conftest import make_llm
from tests.helpers import auth, follow_to_end, log_events

pytestmark = pytest.mark.usefixtures("worker")


async def test_a_rolled_back_write_is_in_the_log_with_its_error(db, user):
    job_id = await make_job(db, user.user_id)
    async with db.job_tx(job_id) as tx:
        section = PlanNode(job_id=job_id, ordinal=0, position=0, title="s", budget_words=10)
        root = CoherenceState(job_id=job_id, kind="root", ordinal=0)
        tx.session.add_all([section, root])
        await tx.session.flush()
        other = CoherenceState(job_id=job_id, kind="handoff", ordinal=1, unit_id=section.id)
        tx.session.add(other)
        await tx.session.flush()
    n = len(await log_events(db, job_id))
    long_brief = "a brief that no other row stores " * 20
    with pytest.raises(IntegrityError, match="not the state left by its predecessor"):
        async with db.job_tx(job_id) as tx:  # the chain trigger rejects a chunk written from the wrong state
            tx.session.add(
                Chunk(
                    job_id=job_id,
                    section_id=section.id,
                    ordinal=0,
                    index_in_section=0,
                    brief=long_brief,
                    target_words=5,
                    min_words=5,
                    max_words=6,
                    status="writing",
                    state_before_id=other.id,
                )
            )
            await tx.session.flush()
    after = (await log_events(db, job_id))[n:]
    assert [(e["kind"], e["action"]) for e in after] == [("sql", "write"), ("error", "rollback")]
    insert, error = after
    assert all(e["data"]["rolled_back"] is True for e in after)
    assert insert["sql_text"].startswith("INSERT INTO chunks") and "not the state left" in insert["data"]["error"]
    assert insert["data"]["params"]["brief"] == long_brief  # its row is gone: the value is kept whole
    assert error["data"]["error"].startswith("IntegrityError: ") and "not the state left" in error["data"]["error"]
    assert "INSERT INTO chunks" in error["data"]["error"]  # the full error text, statement and all

    # A lost connection: the transaction dies with its connection, and is still in the log.
    n = len(await log_events(db, job_id))
    with pytest.raises(OperationalError):
        async with db.job_tx(job_id) as tx:
            await tx.session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    lost = (await log_events(db, job_id))[n:]
    assert [(e["kind"], e["action"]) for e in lost] == [("sql", "read"), ("error", "rollback")]
    assert "terminat" in lost[0]["data"]["error"] and lost[1]["data"]["error"].startswith("OperationalError")
    assert (await logreader.verify(db, job_id)).intact


async def test_finalize_retried_after_its_commit_adds_no_event(db, user):
    job_id = await make_job(db, user.user_id)
    async with db.job_tx(job_id) as tx:
        section = PlanNode(job_id=job_id, ordinal=0, position=0, title="s", budget_words=10)
        tx.session.add(section)
        await tx.session.flush()
        tx.session.add(
            Chunk(
                job_id=job_id,
                section_id=section.id,
                ordinal=0,
                index_in_section=0,
                target_words=10,
                min_words=10,
                max_words=11,
                text="Only four words here.",
            )
        )
    finalize = FinalizeActivities(db).finalize
    n = len(await log_events(db, job_id))
    first = await finalize(RoundRef(str(job_id), 0))
    once = (await log_events(db, job_id))[n:]
    assert not first.met and not first.give_up and first.words == 4
    assert [(e["kind"], e["action"]) for e in once if e["kind"] not in ("sql", "row")] == [
        ("length", "fail"),
        ("job", "short"),
    ]
    again = await finalize(RoundRef(str(job_id), 0))  # as after a worker died before reporting
    retry = (await log_events(db, job_id))[n + len(once) :]
    assert again == first
    # Its reads are real and logged; nothing is written or recorded again.
    assert retry and {(e["kind"], e["action"]) for e in retry} == {("sql", "read")}


async def test_plan_retried_after_its_first_commit_says_running_once(db, fake, user):
    job_id = await make_job(db, user.user_id)
    plan = PlanActivities(db, make_llm(db, fake)).plan_job
    fake.inject(*["500"] * 6)  # every HTTP attempt of the first try fails, after its first commit
    with pytest.raises(LlmUnavailable):
        await plan(JobRef(str(job_id)))
    await plan(JobRef(str(job_id)))
    log = await log_events(db, job_id)
    assert [e["action"] for e in log if e["kind"] == "job"] == ["running"]
    assert [e["action"] for e in log if e["kind"] == "plan"] == ["created"]


async def test_user_actions_are_in_the_jobs_log(http, fake, user, db):
    fake.reset(delay_s=0.05)
    r = await http.post(
        "/v1/jobs", json={"kind": "generate", "prompt": "Ice", "target_words": 3000}, headers=auth(user)
    )
    jid = r.json()["id"]
    ua = {"User-Agent": "quire-test/1.0"}
    assert (await http.post(f"/v1/jobs/{jid}/views", headers={**auth(user), **ua})).status_code == 204
    assert (await http.post(f"/v1/jobs/{jid}/cancel", headers={**auth(user), **ua})).status_code == 202
    _, end = await follow_to_end(http, jid, user)
    assert end["status"] == "cancelled"
    assert (await http.get(f"/v1/jobs/{jid}/output?partial=1", headers={**auth(user), **ua})).status_code == 200
    assert (await http.get(f"/v1/jobs/{jid}/audit?download=1", headers={**auth(user), **ua})).status_code == 200
    log = await log_events(db, uuid.UUID(jid))
    acts = [e for e in log if e["kind"] == "user"]
    assert [e["action"] for e in acts] == ["view", "cancel", "download_output", "download_audit"]
    for e in acts:
        d = e["data"]
        assert (d["user"], d["user_id"], d["ip"], d["user_agent"]) == (
            user.name,
            user.user_id,
            "127.0.0.1",
            ua["User-Agent"],
        )
        assert e["ts"].endswith("Z")
    cancel = next(e for e in log if e["kind"] == "workflow" and e["action"] == "cancel")
    assert acts[1]["seq"] < cancel["seq"]  # asked for, then sent to the workflow
    assert acts[2]["data"]["role"] == "partial" and len(acts[2]["data"]["sha256"]) == 64
    # Paged reads and status polls are reads, not downloads: they add nothing to the job's log.
    n = len(log)
    await http.get(f"/v1/jobs/{jid}/audit?limit=5", headers=auth(user))
    await http.get(f"/v1/jobs/{jid}", headers=auth(user))
    assert len(await log_events(db, uuid.UUID(jid))) == n
    assert (await http.post(f"/v1/jobs/{uuid.uuid4()}/views", headers=auth(user))).status_code == 404
