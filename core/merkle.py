"""The Merkle tree over a job's log (RFC 9162, section 2.1): its leaves, its root as it grows, and
inclusion (§2.1.3) and consistency (§2.1.4) proofs, produced and verified as the RFC gives them.

Hashing: leaf ``SHA-256(0x00 || entry)``, node ``SHA-256(0x01 || left || right)``, split at the
largest power of two smaller than the size. The leaf of event ``seq`` is the 32 bytes of its chain
hash (``core.eventformat.event_hash``), which covers the event's content, its job and the hash
before it: leaf ``seq`` is the tree's ``seq``-th leaf, so tree size N is exactly the log up to seq N.

``Frontier`` keeps a log's root as events are appended with O(log n) hashes (the right edge of the
tree, kept on the job row); each append also yields the interior nodes it completes, which the
database keeps (``audit_nodes``): every node a proof needs is the hash of a perfect subtree
(``Node``: a level and an index), or a fold of at most log2(n) of them, so a proof reads
O(log n) stored hashes (``needed``), never the whole log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162: the hash of an empty tree
MAX_PROOF = 63  # hashes: no proof of a tree below 2^63 leaves is longer (C2SP tlog-witness caps it too)

# A perfect subtree: (level, index) covers leaves [index * 2^level, (index + 1) * 2^level).
Node = tuple[int, int]


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

    def append(self, entry: bytes) -> list[tuple[Node, bytes]]:
        """Append a leaf; the interior nodes it completes, lowest first (level >= 1)."""
        h, n = leaf_hash(entry), self.size
        made: list[tuple[Node, bytes]] = []
        level = 0
        while n & 1:  # merge the equal-sized subtrees that the new leaf completes
            h = node_hash(self.hashes.pop(), h)
            n >>= 1
            level += 1
            made.append(((level, self.size >> level), h))
        self.hashes.append(h)
        self.size += 1
        return made

    def extend(self, entries: Iterable[bytes]) -> list[tuple[Node, bytes]]:
        return [node for e in entries for node in self.append(e)]

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


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


Range = tuple[int, int]  # leaves [lo, hi) of a subtree as RFC 9162 splits the tree


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees whose hashes make PATH(index, D[0:size]) (RFC 9162 §2.1.3.1), leaf first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    out: list[Range] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m = lo + k, m - k
    return out[::-1]


def consistency_ranges(old: int, new: int) -> list[Range]:
    """The subtrees whose hashes make PROOF(old, D[0:new]) (RFC 9162 §2.1.4.1), for 0 < old <= new:
    SUBPROOF(old, D[0:new], true), its recursion unrolled (empty when old == new)."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency proof from a tree of {old} leaves to one of {new}")
    out: list[Range] = []
    lo, hi, m, whole = 0, new, old, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        out.append((lo, hi))
    return out[::-1]


def blocks(lo: int, hi: int) -> list[Node]:
    """The perfect subtrees that make up the RFC subtree [lo, hi), largest (leftmost) first: one per
    1-bit of ``hi - lo`` (``lo`` is a multiple of the subtree's width, as every RFC subtree's is)."""
    out: list[Node] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def needed(ranges: Iterable[Range]) -> set[Node]:
    """Every stored hash the hashes of ``ranges`` are folded from."""
    return {b for lo, hi in ranges for b in blocks(lo, hi)}


def range_hash(lo: int, hi: int, nodes: Mapping[Node, bytes]) -> bytes:
    """MTH(D[lo:hi]) from the hashes of its perfect subtrees (``nodes``; level 0 are leaf hashes)."""
    parts = [nodes[b] for b in blocks(lo, hi)]
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h


def root_ranges(size: int) -> list[Range]:
    return [(0, size)] if size else []


def inclusion_proof(index: int, size: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """PATH(index, D[0:size]) from stored hashes (``needed(inclusion_ranges(index, size))``)."""
    return [range_hash(lo, hi, nodes) for lo, hi in inclusion_ranges(index, size)]


def consistency_proof(old: int, new: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """PROOF(old, D[0:new]) from stored hashes (``needed(consistency_ranges(old, new))``)."""
    return [range_hash(lo, hi, nodes) for lo, hi in consistency_ranges(old, new)]


def verify_inclusion(leaf: bytes, index: int, size: int, root: bytes, path: list[bytes]) -> None:
    """RFC 9162 §2.1.3.2: ProofError unless ``path`` shows leaf hash ``leaf`` at ``index`` (0-based)
    in the tree of ``size`` leaves with ``root``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    if len(path) > MAX_PROOF:
        raise ProofError(f"an inclusion proof of {len(path)} hashes is longer than any tree needs")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError(f"the inclusion proof of leaf {index} in a tree of {size} has hashes left over")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the inclusion proof of leaf {index} in a tree of {size} is too short")
    if r != root:
        raise ProofError(f"the inclusion proof of leaf {index} in a tree of {size} leads to another root")


def verify_consistency(old: int, old_root: bytes, new: int, new_root: bytes, path: list[bytes]) -> None:
    """RFC 9162 §2.1.4.2: ProofError unless ``path`` shows the tree (``new``, ``new_root``) extends
    (``old``, ``old_root``). Equal sizes need equal roots and an empty proof; size 0 extends to any."""
    if len(path) > MAX_PROOF:
        raise ProofError(f"a consistency proof of {len(path)} hashes is longer than any tree needs")
    if old > new or old < 0:
        raise ProofError(f"a tree of {new} leaves cannot extend one of {old}")
    if old == 0 or old == new:
        if path:
            raise ProofError(f"a consistency proof from {old} to {new} leaves is empty")
        if old == new and old_root != new_root:
            raise ProofError(f"two different roots for the tree of {old} leaves: a rewritten log")
        return
    if not path:
        raise ProofError(f"the consistency proof from {old} to {new} leaves is empty")
    if old & (old - 1) == 0:  # a complete left subtree: its root is the proof's first hash
        path = [old_root, *path]
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"the consistency proof from {old} to {new} leaves has hashes left over")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the consistency proof from {old} to {new} leaves is too short")
    if fr != old_root:
        raise ProofError(f"the consistency proof from {old} to {new} leaves does not lead to the old root")
    if sr != new_root:
        raise ProofError(f"the consistency proof from {old} to {new} leaves leads to another root")
