"""Temporal keeps nothing a user or the model wrote in clear (every payload of a job's histories
encrypted by the codec, nothing of its text in the server's own file) and nothing of a deleted
job; the codec's key file is private and shared by every process of the stack."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

import testkit
from core.spec import JobSpec
from services import deletion, jobs
from services.codec import ENCODING, data_converter, parse_key
from services.temporal import AuditInterceptor
from tests.conftest import make_llm
from tests.helpers import output
from worker import build_worker

pytestmark = pytest.mark.usefixtures("worker")


PROMPT = "Quillwort semaphore keepers of Vantor Reach"
TITLE = "Ledger of the Obsidian Ferrymen"


def payloads(msg: Message) -> Iterator[tuple[str, Message]]:
    """(field name, Payload) for every Payload inside a protobuf message (a history event, say)."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is None:
                continue
            items: list[Any] = list(value.values())
        else:
            items = [value] if isinstance(value, Message) else list(value)
        for item in items:
            if type(item).__name__ == "Payload":
                yield field.name, item
            else:
                yield from ((f"{field.name}.{n}", p) for n, p in payloads(item))


async def test_temporal_keeps_no_text_in_clear_and_delete_removes_the_workflows(db, fake, user, tmp_path):
    """A Temporal dev server persisted to a SQLite file of its own: after a job, neither its prompt,
    its title nor a sentence of its output can be read in that file, while text sent in clear would
    be; every payload of its histories is encrypted; delete leaves no workflow of the job."""
    fake.reset(ratio=(1.0, 1.1))
    db_file = tmp_path / "temporal.db"
    # Temporal deletes asynchronously, and by default holds a just-closed workflow's deletion until
    # its close has been fully processed (~35 s on the dev server): the wait is turned off here.
    no_wait = [f"history.{q}ProcessorEnsureCloseBeforeDelete=false" for q in ("transfer", "visibility")]
    env = await testkit.temporal([a for v in no_wait for a in ("--dynamic-config-value", v)], db_file=db_file)
    queue = f"private-{uuid.uuid4().hex[:6]}"
    own = await Client.connect(
        testkit.target(env),
        interceptors=[AuditInterceptor(db)],
        data_converter=data_converter(parse_key(testkit.TEMPORAL_KEY)),
    )
    llm = make_llm(db, fake)
    try:
        async with build_worker(own, db, llm, queue):
            job, _ = await jobs.submit(
                db,
                own,
                user_id=user.user_id,
                user_name=user.name,
                spec=JobSpec(kind="generate", prompt=PROMPT, title=TITLE, target_words=300),
                task_queue=queue,
                default_model="fake-model",
            )
            assert await own.get_workflow_handle(job.workflow_id).result() == "succeeded"
            # A canary sent in clear by a client without the codec: the grep below would see it.
            plain = await Client.connect(testkit.target(env))
            canary = f"plaintext-canary-{uuid.uuid4().hex}"
            await plain.start_workflow("Nobody", canary, id=f"canary-{uuid.uuid4().hex[:6]}", task_queue="nobody")
            histories = [
                await own.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
                async for wf in own.list_workflows(f"WorkflowId STARTS_WITH 'job-{job.id}'")
            ]
        doc = await output(db, job.id)
        assert doc is not None
        sentence = next(s for s in re.split(r"(?<=\.)\s+", doc.text) if len(s.split()) >= 8 and "#" not in s)

        def stored() -> bytes:
            return b"".join(p.read_bytes() for p in sorted(Path(tmp_path).glob("temporal.db*")))

        blob = stored()
        assert canary.encode() in blob and f"job-{job.id}".encode() in blob  # the grep reads what is there
        for secret in (PROMPT, TITLE, sentence, "Quillwort", "Obsidian Ferrymen"):
            assert secret.encode() not in blob, secret
        # Search attributes are indexed, so in clear by design: ids, kind, user name, target words.
        found = [(n, p) for h in histories for ev in h.events for n, p in payloads(ev) if "search_attributes" not in n]
        assert len(histories) >= 2 and found  # the job and its unit(s)
        clear = {n for n, p in found if p.metadata.get("encoding") != ENCODING}
        assert clear == set(), clear

        deleted = await deletion.delete(db, own, job, user_id=user.user_id, path=f"/v1/jobs/{job.id}")
        assert deleted["temporal"]["workflows_deleted"] == len(histories)

        async def none_left() -> bool:
            return [wf async for wf in own.list_workflows(f"WorkflowId STARTS_WITH 'job-{job.id}'")] == []

        await testkit.until("the job's workflows gone from Temporal", none_left, within=30)
        with pytest.raises(RPCError) as gone:
            await own.get_workflow_handle(job.workflow_id).describe()
        assert gone.value.status == RPCStatusCode.NOT_FOUND
    finally:
        await llm.close()
        await env.shutdown()


async def test_the_codec_key_file_is_private_and_shared(tmp_path):
    from services.codec import KEY_FILE, load_keys

    home = tmp_path / "home"
    (first,) = await asyncio.to_thread(load_keys, None, home)
    assert (home / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert load_keys(None, home) == [first] and len(first) == 32  # every process of the stack reads the same
    assert load_keys(testkit.TEMPORAL_KEY, home) == [parse_key(testkit.TEMPORAL_KEY)]  # the setting wins
