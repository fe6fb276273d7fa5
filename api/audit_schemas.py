"""Response models of the audit log's routes (``api/audit.py``): its events, a page of them, its
signed checkpoints, inclusion and consistency proofs, the verifier's verdict, and the live stream."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.eventformat import EVENT_KINDS
from core.spec import JobStatus


class AuditEvent(BaseModel):
    seq: int = Field(description="per job, gap-free, in commit order")
    ts: str = Field(description="UTC, microseconds: 2026-11-23T14:05:30.271690Z (hashed exactly as written)")
    kind: str = Field(description="; ".join(f"{k}: {v}" for k, v in EVENT_KINDS.items()))
    action: str
    table_name: str | None
    row_id: str | None
    sql_text: str | None = Field(description="the statement, parameters separate (sql events)")
    data: dict[str, Any] = Field(
        description="a value too long to inline is {$ref: 'table.column#id', length, sha256, head}; the "
        "events of a transaction that rolled back carry rolled_back: true"
    )
    chain: int = Field(description="the hashed form: 2 binds the job id; 1, events written before it did")
    job_id: str
    prev_hash: str = Field(description="the hash of seq - 1 (64 zeros for seq 1)")
    hash: str = Field(
        description="sha256(prev_hash + RFC 8785 JSON of chain, job_id, seq, ts, kind, action, table_name, "
        "row_id, sql_text, data), hex (chain 1: without chain and job_id); the event's Merkle leaf"
    )


class Checkpoint(BaseModel):
    """A signed checkpoint: the Merkle root of the log's first ``tree_size`` events, signed."""

    tree_size: int
    root: str = Field(description="hex")
    key_id: str = Field(description="<key name>+<key id>: the public key (`quire keys export`) that checks it")
    ts: str
    note: str = Field(description="the C2SP signed note: origin, tree size, base64 root, blank line, signatures")


class AuditPage(BaseModel):
    """``format=json``. NDJSON is one AuditEvent per line; TXT is described at ``api.audit.txt_line``."""

    job_id: str
    events: list[AuditEvent]
    next_after: int | None = Field(description="with ?limit=: pass as ?after= for the next page; null at the end")
    head_seq: int | None = Field(None, description="the last seq sent (absent when filtered by kind)")
    head_hash: str | None = Field(None, description="the hash of that event: the head of the chain sent")
    checkpoints: list[Checkpoint] | None = Field(None, description="the whole log's signed checkpoints")


class InclusionProof(BaseModel):
    """``GET /v1/jobs/{id}/audit/proof?seq=N``: event N, a signed checkpoint, and the Merkle path
    between them. ``quire audit verify --proof FILE --key audit.pub`` checks it offline."""

    type: Literal["inclusion"]
    job_id: str
    seq: int
    event: AuditEvent
    tree_size: int
    checkpoint: str = Field(description="the signed note of the tree the event is proved in")
    proof: dict[str, Any] = Field(description="the Merkle path (pymerkle's form: rule, path in hex)")


class ConsistencyProof(BaseModel):
    """``GET /v1/jobs/{id}/audit/consistency?old=M&new=N``: the tree of checkpoint N extends that of M."""

    type: Literal["consistency"]
    job_id: str
    old: str = Field(description="the earlier checkpoint's signed note")
    new: str = Field(description="the later checkpoint's signed note")
    proof: dict[str, Any]


class AuditVerdict(BaseModel):
    """``GET /v1/jobs/{id}/audit/verify``: the log's hash chain recomputed from seq 1 and compared
    with the head kept on the job, the heads its documents recorded and the rows it references."""

    job_id: str
    intact: bool
    events: int = Field(description="events whose hashes were recomputed (seq 1..events)")
    head_seq: int
    head_hash: str = Field(description="the recomputed head (the hash of the last event verified)")
    first_bad_seq: int | None = Field(description="the first seq that fails, when not intact")
    reason: str | None = Field(description="what fails there")
    references_checked: int = Field(description="referenced long values whose sha256 was recomputed")
    references_gone: int = Field(description="referenced rows that no longer exist")
    anchors_checked: int = Field(description="documents whose recorded head was found in the chain")
    legacy_events: int = Field(description="events of chain version 1 (hashed before the job id was bound)")
    checkpoints: int = Field(description="signed checkpoints whose Merkle root matches the log")
    signatures_checked: bool = Field(description="whether their signatures were checked with the public keys")
    signed_by: list[str] = Field(description="the keys that signed them")
    covered_seq: int = Field(description="the log up to this seq is under a signed checkpoint")
    root: str | None = Field(description="the Merkle root of the whole log (hex)")


class StreamEnd(BaseModel):
    """The data of a stream's last event (``event: end``)."""

    status: JobStatus | None = Field(default=None, description="how the job ended")
    reason: Literal["deleted", "revoked"] | None = Field(
        default=None, description="the job was deleted, or the stream's API key was revoked"
    )
    last_seq: int = Field(description="the seq of the last event sent")


# Each server-sent event of /audit/stream, as schemathesis and other readers of the spec check it.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the event's seq (absent on `end`)"},
        "event": {"type": "string", "enum": ["message", "end"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [{"$ref": "#/components/schemas/AuditEvent"}, {"$ref": "#/components/schemas/StreamEnd"}]
            },
        },
    },
}
