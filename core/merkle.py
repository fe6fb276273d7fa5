"""The Merkle tree over a job's log (RFC 9162, section 2.1): its leaves, its root as it grows, and
inclusion and consistency proofs, built and checked with pymerkle (the same tree: leaf hash
``SHA-256(0x00 || entry)``, node hash ``SHA-256(0x01 || left || right)``, split at the largest
power of two).

The leaf of event ``seq`` is the 32 bytes of its chain hash (``core.eventformat.event_hash``), which
covers the event's content, its job and the hash before it: leaf ``seq`` is the tree's ``seq``-th
leaf, so tree size N is exactly the log up to seq N. ``Frontier`` keeps a log's root as events are
appended with O(log n) hashes (the right edge of the tree), which the database keeps on the job
row; proofs need every leaf and are built when asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymerkle import ConsistencyProof, InclusionProof, InmemoryTree, InvalidProof

EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162: the hash of an empty tree


class ProofError(ValueError):
    """A proof that does not prove what it claims (the message says what failed)."""


def leaf_entry(event_hash: str) -> bytes:
    return bytes.fromhex(event_hash)


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


@dataclass
class Frontier:
    """The roots of the perfect subtrees that make up a tree of ``size`` leaves, largest first
    (one per 1-bit of ``size``): enough to append leaves and to compute the root."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, entry: bytes) -> None:
        h, n = leaf_hash(entry), self.size
        while n & 1:  # merge the equal-sized subtrees that the new leaf completes
            h = node_hash(self.hashes.pop(), h)
            n >>= 1
        self.hashes.append(h)
        self.size += 1

    def extend(self, entries: Iterable[bytes]) -> None:
        for e in entries:
            self.append(e)

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def to_text(self) -> str:
        """As the job row keeps it: the hashes in hex, concatenated (their count follows from size)."""
        return "".join(h.hex() for h in self.hashes)

    @classmethod
    def from_text(cls, size: int, text: str) -> Frontier:
        hashes = [bytes.fromhex(text[i : i + 64]) for i in range(0, len(text), 64)]
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of a tree of {size} leaves has {size.bit_count()} hashes, not {len(hashes)}")
        return cls(size, hashes)


def tree(entries: Sequence[bytes]) -> InmemoryTree:
    t = InmemoryTree(algorithm="sha256")
    t.append_entries(list(entries))
    return t


def inclusion_proof(entries: Sequence[bytes], seq: int, size: int) -> dict[str, Any]:
    """The proof that leaf ``seq`` (1-based, the event's seq) is in the tree of the first ``size``
    leaves, serialised (pymerkle's form: ``rule`` and ``path``, hex)."""
    return dict(tree(entries[:size]).prove_inclusion(seq, size).serialize())


def consistency_proof(entries: Sequence[bytes], old_size: int, new_size: int) -> dict[str, Any]:
    """The proof that the tree of ``new_size`` leaves extends the tree of ``old_size`` leaves."""
    return dict(tree(entries[:new_size]).prove_consistency(old_size, new_size).serialize())


def verify_inclusion(entry: bytes, seq: int, size: int, root: bytes, proof: dict[str, Any]) -> None:
    """ProofError unless ``proof`` shows leaf ``entry`` at ``seq`` in the tree of ``size`` with ``root``."""
    try:
        p = InclusionProof.deserialize(proof)
        p.verify(leaf_hash(entry), root, index=seq, size=size)
    except InvalidProof as exc:
        raise ProofError(f"the inclusion proof of seq {seq} in a tree of {size} does not hold ({exc})") from None


def verify_consistency(old_size: int, old_root: bytes, new_size: int, new_root: bytes, proof: dict[str, Any]) -> None:
    """ProofError unless ``proof`` shows the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``)."""
    try:
        p = ConsistencyProof.deserialize(proof)
        p.verify(old_root, new_root, prior_size=old_size, later_size=new_size)
    except InvalidProof as exc:
        raise ProofError(
            f"the tree of {new_size} does not extend the tree of {old_size} by this proof ({exc})"
        ) from None
