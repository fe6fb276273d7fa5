"""SQL-level audit: same-transaction events, gap-free seqs, append-only, no secrets, deletion."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from core.errors import JobGone
from db.manuscript import Chunk, ChunkVersion, PlanNode
from db.models import AuditEvent, Document, Job
from db.session import Database
from services import views
from testkit import make_job
from tests.conftest import TEST_SECRET


async def events(db: Database, job_id: uuid.UUID) -> list[AuditEvent]:
    async with db.tx() as s:
        return list(
            (await s.execute(select(AuditEvent).where(AuditEvent.job_id == job_id).order_by(AuditEvent.seq))).scalars()
        )


async def test_statements_and_rows_are_recorded_with_real_sql(db, user):
    job_id = await make_job(db, user.user_id)
    evs = await events(db, job_id)
    sql = [e for e in evs if e.kind == "sql"]
    assert sql[0].sql_text.startswith("INSERT INTO jobs")
    assert sql[0].action == "write" and sql[0].data["tables"] == ["jobs"] and sql[0].data["rowcount"] == 1
    assert "duration_ms" in sql[0].data
    # One event per written row: the INSERT's own event names the row and carries its values.
    assert sql[0].row_id == str(job_id) and sql[0].table_name == "jobs"
    ((row,),) = [sql[0].data["rows"]]
    assert row["id"] == str(job_id) and row["values"]["id"] == str(job_id)
    assert row["values"]["workflow_id"] == f"job-{job_id}" and row["values"]["target_words"] == 10
    assert [e for e in evs if e.kind == "row"] == []
    async with db.job_tx(job_id) as tx:
        job = await tx.session.get(Job, job_id)
        job.title = "New title"
    evs = await events(db, job_id)
    read = [e for e in evs if e.kind == "sql" and e.action == "read"]
    assert read and read[-1].data["tables"] == ["jobs"] and read[-1].sql_text.startswith("SELECT")
    (upd,) = [e for e in evs if e.kind == "sql" and e.sql_text.startswith("UPDATE jobs SET title")]
    assert upd.row_id == str(job_id)
    assert upd.data["rows"] == [{"id": str(job_id), "changes": {"title": {"old": None, "new": "New title"}}}]
    assert [e for e in evs if e.kind == "row"] == []
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))


async def test_one_statement_of_many_rows_carries_every_row(db, user):
    job_id = await make_job(db, user.user_id)
    before = len(await events(db, job_id))
    async with db.job_tx(job_id) as tx:
        nodes = [PlanNode(job_id=job_id, ordinal=i, position=i, title=f"part {i}", budget_words=5) for i in range(3)]
        tx.session.add_all(nodes)
        await tx.session.flush()
        for n in nodes[:2]:
            n.title += " revised"
        await tx.session.flush()
        await tx.session.delete(nodes[2])
    evs = (await events(db, job_id))[before:]
    assert [e for e in evs if e.kind == "row"] == []
    (ins,) = [e for e in evs if e.kind == "sql" and e.sql_text.startswith("INSERT INTO plan_nodes")]
    assert ins.row_id is None  # three rows: each is named in data.rows
    assert [(r["id"], r["values"]["title"]) for r in ins.data["rows"]] == [
        (str(n.id), n.title.removesuffix(" revised")) for n in nodes
    ]
    updates = [e for e in evs if e.kind == "sql" and e.sql_text.startswith("UPDATE plan_nodes")]
    rows = [r for e in updates for r in e.data["rows"]]
    assert sorted(r["id"] for r in rows) == sorted(str(n.id) for n in nodes[:2])
    assert all(r["changes"]["title"]["new"] == r["changes"]["title"]["old"] + " revised" for r in rows)
    (gone,) = [e for e in evs if e.kind == "sql" and e.sql_text.startswith("DELETE FROM plan_nodes")]
    assert gone.data["rows"] == [{"id": str(nodes[2].id)}] and gone.row_id == str(nodes[2].id)


async def test_a_row_no_statement_can_be_shown_to_have_written_gets_an_event_of_its_own(db, user):
    # A changed primary key: the UPDATE names the row by its old id, the object holds its new one.
    job_id = await make_job(db, user.user_id)
    async with db.job_tx(job_id) as tx:
        tx.session.add(node := PlanNode(job_id=job_id, ordinal=0, position=0, title="moved", budget_words=5))
    old_id = node.id
    before = len(await events(db, job_id))
    new_id = -old_id  # off the sequence's path: a later insert must never meet it
    async with db.job_tx(job_id) as tx:
        (await tx.session.get(PlanNode, old_id)).id = new_id
    evs = (await events(db, job_id))[before:]
    (upd,) = [e for e in evs if e.kind == "sql" and e.sql_text.startswith("UPDATE plan_nodes")]
    assert "rows" not in upd.data and upd.data["params"]["plan_nodes_id"] == old_id
    (row,) = [e for e in evs if e.kind == "row"]
    assert (row.action, row.table_name, row.row_id) == ("update", "plan_nodes", str(new_id))
    assert row.data["changes"]["id"] == {"old": old_id, "new": new_id}


async def test_rollback_leaves_no_rows_but_its_events_marked_rolled_back(db, user):
    job_id = await make_job(db, user.user_id)
    before = await events(db, job_id)
    with pytest.raises(RuntimeError):
        async with db.job_tx(job_id) as tx:
            tx.session.add(PlanNode(job_id=job_id, ordinal=0, position=0, title="doomed", budget_words=5))
            await tx.session.flush()
            tx.event("test", "before-failure", {})
            raise RuntimeError("boom")
    async with db.tx() as s:
        assert (await s.execute(select(PlanNode).where(PlanNode.job_id == job_id))).first() is None
    after = (await events(db, job_id))[len(before) :]
    assert [(e.kind, e.action) for e in after] == [("sql", "write"), ("test", "before-failure"), ("error", "rollback")]
    assert (
        after[0].sql_text.startswith("INSERT INTO plan_nodes")
        and after[0].data["rows"][0]["values"]["title"] == "doomed"
    )
    assert all(e.data["rolled_back"] is True for e in after)
    assert after[-1].data["error"] == "RuntimeError: boom" and after[-1].data["statements"] == 1
    assert [e.seq for e in await events(db, job_id)] == list(range(1, len(before) + 4))


async def test_concurrent_writers_get_gap_free_seqs(db, user):
    job_id = await make_job(db, user.user_id)

    async def writer(i: int) -> None:
        for j in range(10):
            async with db.job_tx(job_id) as tx:
                tx.session.add(
                    PlanNode(
                        job_id=job_id, ordinal=i * 100 + j, position=i * 100 + j, title=f"s{i}-{j}", budget_words=1
                    )
                )
                tx.event("test", "write", {"writer": i, "n": j})

    await asyncio.gather(*(writer(i) for i in range(8)))
    seqs = [e.seq for e in await events(db, job_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= 8 * 10 * 2  # insert SQL (with its row) + custom event per transaction
    async with db.tx() as s:
        assert (await s.get(Job, job_id)).audit_seq == len(seqs)


async def test_audit_rows_cannot_be_updated_or_deleted_alone(db, pg_url, user):
    job_id = await make_job(db, user.user_id)
    with psycopg.connect(pg_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("UPDATE audit_events SET kind = 'forged' WHERE job_id = %s", (job_id,))
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only with their job"):
            conn.execute("DELETE FROM audit_events WHERE job_id = %s", (job_id,))
        conn.rollback()


async def test_secret_never_appears_in_audit_rows(db, user):
    job_id = await make_job(db, user.user_id)
    async with db.job_tx(job_id) as tx:
        # A secret in a value, and under a secret-looking parameter name.
        await tx.session.execute(
            text("SELECT :api_key AS k, :v AS v"), {"api_key": "abcd1234", "v": f"x {TEST_SECRET} y"}
        )
        tx.event("test", "note", {"text": f"the key is {TEST_SECRET}"})
    async with db.tx() as s:
        n = (
            await s.execute(
                text(
                    "SELECT count(*) FROM audit_events WHERE job_id = :j AND "
                    "(data::text LIKE :p OR sql_text LIKE :p OR data::text LIKE '%abcd1234%')"
                ),
                {"j": job_id, "p": f"%{TEST_SECRET}%"},
            )
        ).scalar_one()
        assert n == 0
        assert (
            await s.execute(
                text("SELECT count(*) FROM audit_events WHERE job_id = :j AND data::text LIKE '%[REDACTED]%'"),
                {"j": job_id},
            )
        ).scalar_one() >= 2


async def test_deleting_a_job_removes_what_it_owns_and_nothing_else(db, user):
    keep = await make_job(db, user.user_id)
    gone = await make_job(db, user.user_id)
    for jid in (keep, gone):
        async with db.job_tx(jid) as tx:
            tx.session.add(Document(job_id=jid, role="input", text="a b", sha256="x", word_count=2))
    async with db.tx() as s:
        await s.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": gone})
    async with db.tx() as s:
        for table in ("audit_events", "documents"):
            left = (await s.execute(text(f"SELECT count(*) FROM {table} WHERE job_id = :j"), {"j": gone})).scalar_one()
            kept = (await s.execute(text(f"SELECT count(*) FROM {table} WHERE job_id = :j"), {"j": keep})).scalar_one()
            assert left == 0 and kept > 0, table
    with pytest.raises(JobGone):
        async with db.job_tx(gone) as tx:
            tx.event("test", "late", {})


async def test_notify_carries_job_and_seq_at_commit(db, pg_url, user):
    job_id = await make_job(db, user.user_id)
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute("LISTEN quire_audit")
        async with db.job_tx(job_id) as tx:
            tx.event("test", "ping", {})
        seq = (await events(db, job_id))[-1].seq
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert got == [f"{job_id}:{seq}"]


async def test_chunk_chain_is_enforced_by_the_database(db, pg_url, user):
    job_id = await make_job(db, user.user_id)
    with psycopg.connect(pg_url) as conn:
        sid = conn.execute(
            "INSERT INTO plan_nodes (job_id, ordinal, position, title, budget_words) VALUES (%s,0,0,'s',10)"
            " RETURNING id",
            (job_id,),
        ).fetchone()[0]
        conn.execute("INSERT INTO coherence_states (job_id, kind, ordinal) VALUES (%s, 'root', 0)", (job_id,))
        s_other = conn.execute(
            "INSERT INTO coherence_states (job_id, kind, ordinal, unit_id) VALUES (%s, 'handoff', 1, %s) RETURNING id",
            (job_id, sid),
        ).fetchone()[0]
        with pytest.raises(psycopg.errors.CheckViolation, match="not the state left by its predecessor"):
            conn.execute(
                "INSERT INTO chunks (job_id, section_id, ordinal, index_in_section, target_words, min_words,"
                " max_words, status, state_before_id) VALUES (%s,%s,0,0,5,5,6,'writing',%s)",
                (job_id, sid, s_other),
            )
        conn.rollback()


async def test_unknown_job_is_an_error_not_a_silent_drop(db):
    with pytest.raises((JobGone, DBAPIError)):
        async with db.job_tx(uuid.uuid4()) as tx:
            tx.event("test", "orphan", {})


async def test_the_chunks_committed_since_a_seq_are_read_from_the_inserts_rows(db, user):
    # The job page rereads only the chunks that gained a version since its last read
    # (/draft?after=): the versions' ids come from the rows their INSERT carries.
    job_id = await make_job(db, user.user_id)
    async with db.job_tx(job_id) as tx:
        tx.session.add(section := PlanNode(job_id=job_id, ordinal=0, position=0, title="s", budget_words=20))
        await tx.session.flush()
        chunks = [
            Chunk(job_id=job_id, section_id=section.id, ordinal=i, index_in_section=i, target_words=9, min_words=9,
                  max_words=10, text="t")
            for i in range(3)
        ]  # fmt: skip
        tx.session.add_all(chunks)
    seen = len(await events(db, job_id))
    async with db.job_tx(job_id) as tx:
        tx.session.add_all(
            ChunkVersion(job_id=job_id, chunk_id=c.id, version=1, reason="written", text="t", word_count=1, sha256="-")
            for c in chunks[1:]
        )
    async with db.tx() as s:
        assert await views._chunks_committed_after(s, job_id, seen) == {1, 2}
        assert await views._chunks_committed_after(s, job_id, len(await events(db, job_id))) == set()
