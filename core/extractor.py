"""The deterministic extractor: what a passage plainly establishes when no model answer says it (a
base model, an answer invalid twice): an extractive summary and every proper name with the
sentence that introduced it. Also what completes a valid answer that left a name out. Pure."""

from __future__ import annotations

import re

from core.memory import ChunkMemory, Entity, key_of
from core.names import same_thing
from core.text import paragraphs

SUMMARY_WORDS = 80

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\n+")
_ABBREV = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Mt|Jr|Sr|Capt|Col|Gen|Lt|Sgt|Prof|Rev|vs|No)\.\s", re.I)
_TOKEN = re.compile(r"[\w'’-]+|[^\w\s]")
_CONNECTORS = {"of", "the", "de", "van", "von", "la", "le", "du", "da", "del", "di", "al", "bin", "y"}
_PERSON_TITLES = {
    "mr", "mrs", "ms", "miss", "dr", "doctor", "captain", "capt", "lady", "lord", "sir", "dame", "king",
    "queen", "prince", "princess", "professor", "prof", "father", "mother", "sister", "brother", "uncle",
    "aunt", "colonel", "general", "lieutenant", "sergeant", "madame", "monsieur", "señor", "herr",
}  # fmt: skip
# Words that start sentences capitalised without being names; a name is never one of them alone.
COMMON_WORDS = set(
    """a about above after again against all also although am an and another any are as at be because been
    before being below between both but by can could did do does doing down during each either even every
    few for from further had has have having he her here hers herself him himself his how however i if in
    into is it its itself just let me meanwhile might more most much must my myself neither never no nor
    not now of off often on once only or other our ours ourselves out over own perhaps rather same she
    should since so some still such than that the their theirs them themselves then there therefore these
    they this those though through thus to too under until up upon us very was we were what whatever when
    where whether which while who whom whose why will with within without would yes yet you your yours
    yourself one two three four five six seven eight nine ten first second third last next later soon
    today tomorrow yesterday tonight morning evening night day chapter part section oh ah well indeed
    instead besides finally suddenly slowly quickly outside inside behind beyond across along around
    nothing something everything anything someone everyone nobody somebody everybody many several
    only""".split()
)


def sentences(text: str) -> list[str]:
    """Sentences of a passage (abbreviations such as "Mr." do not end one)."""
    protected = _ABBREV.sub(lambda m: m.group(0).replace(". ", ".\u2060"), text)
    out = [s.replace("\u2060", " ").strip() for s in _SENTENCE_END.split(protected)]
    return [s for s in out if s]


def _cap(tok: str) -> bool:
    return tok[:1].isupper() and any(ch.isalpha() for ch in tok) and tok not in ("I", "I'm", "I'd", "I'll", "I've")


def proper_names(text: str) -> list[tuple[str, str, str]]:
    """Every proper name in ``text`` with the first sentence that has it and a guessed type:
    (name, sentence, type), in order of first appearance. A name is a run of capitalised words
    (inner "of", "de", "van"... allowed) that is no common word; one capitalised word inside a
    sentence is a name even when it appears once. Every sentence's first word is capitalised, so
    a lone word there is a name only if the passage also capitalises it inside a sentence, or it
    runs into more capitalised words ("Captain Mara Quell checked...")."""
    sents = [_TOKEN.findall(s) for s in sentences(text)]
    inner = {t for toks in sents for i, t in enumerate(toks) if i > 0 and _cap(t) and re.match(r"\w", toks[i - 1])}
    found: dict[str, tuple[str, str, str]] = {}
    for sent, toks in zip(sentences(text), sents, strict=True):
        i = 0
        while i < len(toks):
            if not _cap(toks[i]):
                i += 1
                continue
            start = i
            run = [toks[i]]
            j = i + 1
            while j < len(toks):
                if _cap(toks[j]):
                    run.append(toks[j])
                    j += 1
                elif toks[j].lower() in _CONNECTORS and j + 1 < len(toks) and _cap(toks[j + 1]):
                    run += [toks[j], toks[j + 1]]
                    j += 2
                else:
                    break
            i = j
            opens = all(not re.match(r"\w", t) for t in toks[:start])
            while run and run[0].lower() in COMMON_WORDS:
                run, opens = run[1:], False
            while run and run[-1].lower() in _CONNECTORS:
                run = run[:-1]
            if not run or (opens and len(run) == 1 and run[0] not in inner):
                continue
            name = " ".join(run).strip("'’-")
            if len(name) < 2 or key_of(name) in found:
                continue
            prev = toks[start - 1].lower().rstrip(".") if start > 0 else ""
            kind = "person" if run[0].lower().rstrip(".") in _PERSON_TITLES or prev in _PERSON_TITLES else "other"
            found[key_of(name)] = (name, sent[:600], kind)
    # "Mara" alone, after "Mara Quell": the same person, not a new name.
    keys = list(found)
    return [found[k] for k in keys if not any(k != o and same_thing(o, k) and len(o) > len(k) for o in keys)]


def extract(passage: str) -> ChunkMemory:
    """The deterministic delta: an extractive summary and every proper name with the sentence
    that introduced it. What the model would add (attributes, events, threads, facts) it cannot
    know, so it claims none."""
    sents = sentences(" ".join(paragraphs(passage)))
    picked = sents[:1] + (sents[-1:] if len(sents) > 1 else [])
    summary = " ".join(" ".join(picked).split()[:SUMMARY_WORDS]) or "(empty passage)"
    ents = [Entity(name=n, type=t, quote=s) for n, s, t in proper_names(passage)[:40]]
    return ChunkMemory(summary=summary, entities=ents)


def merge(model: ChunkMemory, passage: str) -> tuple[ChunkMemory, list[str]]:
    """The model's delta with every proper name it left out added from the extractor (a valid
    answer that misses what the text plainly establishes is incomplete, not authoritative).
    Returns the merged delta and the names added."""
    have = {key_of(e.name) for e in model.entities}
    added: list[str] = []
    for name, sent, kind in proper_names(passage):
        k = key_of(name)
        if k in have or any(same_thing(k, h) for h in have):
            continue
        if len(model.entities) >= 40:
            break
        model.entities.append(Entity(name=name, type=kind, quote=sent))
        have.add(k)
        added.append(name)
    return model, added
