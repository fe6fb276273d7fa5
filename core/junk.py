"""What junk looks like: the patterns of the gate's rules that read a model's answer as text (chat
tokens, markup that is not the document's, headings and doubled heading markers, empty list markers,
keyword lists, a word said again and again, talk about the text, the task or images the document
does not have). ``core.gate`` runs them, records what each cut, and holds the rules that need more
than a pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CUT_TEXT_CHARS = 200  # of each cut, in the record (the whole answer is kept with its model call)


@dataclass(frozen=True)
class Cut:
    """A piece of junk the gate cut: its rule (the kind of junk), its text and its words."""

    rule: str
    text: str
    words: int

    def record(self) -> dict[str, object]:
        s = " ".join(self.text.split())
        return {
            "rule": self.rule,
            "words": self.words,
            "text": s if len(s) <= CUT_TEXT_CHARS else s[: CUT_TEXT_CHARS - 1] + "…",
        }


# -- tokens and markup -------------------------------------------------------------------------------
SPECIAL_TOKEN = re.compile(
    r"<(?:start|end)_of_[a-z]+>(?:(?:user|model)\b)?|<\|[^|>]{1,40}\|>|</?s>"
    r"|<(?:pad|unk|eos|bos|mask|image_soft_token|unused\d{1,3})>|\[multimodal\]"
)
CODE_FENCE = re.compile(r"^[ \t]*(?:```|~~~).*?(?:^[ \t]*(?:```|~~~)[ \t]*$|\Z)", re.M | re.S)
HTML_BLOCK = re.compile(r"<(h[1-6]|script|style)\b[^>]*>.*?</\1\s*>", re.I | re.S)
HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]{0,12}(?:\s[^<>\n]{0,200})?/?>")
LATEX_MATH = re.compile(
    r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)"
    r"|\$(?:[^$\n]{0,80}?\\[a-zA-Z][^$\n]{0,80}?|[A-Za-z](?:[_^]\{?\w{1,6}\}?)?)\$",
    re.S,
)
LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+\*?(?:\[[^\]\n]{0,80}\])?(?:\{[^{}\n]{0,200}\})*")
HEADING = re.compile(r"^\s*#{1,2}\s")
# A heading marker said twice ("# # My allotment year", "### ### Planning") or inside emphasis
# ("**## The bees' year**"): the prompt's own heading said back, never the document's.
DOUBLED_MARKUP = re.compile(r"^\s*(?:(?:\*\*|__)\s*#{1,6}\s|#{1,6}\s+(?:(?:\*\*|__)\s*)?#{1,6}\s)")
# "Key words: beekeeping, hive, honey bees", "Tags: ...", "#beekeeping #honey #garden": a list of
# search terms, not prose (a list that is content opens with a sentence, not with one of these labels).
KEYWORD_LABEL = re.compile(
    r"^\W{0,3}(?:key\s?words?|key\s?terms?|key\s?phrases?|keywords|tags|hashtags|index\s+terms|search\s+terms"
    r"|related\s+(?:terms|topics|searches|keywords))\s*[:\-—–]\s*(?P<items>\S.*)$",
    re.I,
)
KEYWORD_ITEM_MAX_WORDS = 5
HASHTAGS = re.compile(r"^\s*(?:#[^\W\d_][\w-]*[\s,;]*){2,}$")
# An aside pointing at a picture the document does not have ("(see photo 3)", "[Image: a frame]"),
# or at a part of it that a model cannot know is there ("(see section "Honey Bees")", "(see below)").
POINTER_ASIDE = re.compile(
    r"[ \t]*[(\[]\s*(?:see\s+(?:the\s+)?)?(?:photo(?:graph)?|picture|image|figure|fig\.|illustration|diagram|plate)s?"
    r"\b[^()\[\]\n]{0,80}[)\]]"
    r"|[ \t]*\(\s*see\s+(?:(?:the\s+)?(?:section|chapter|part|page)s?\b[^()\n]{0,80}|above|below)\s*\)",
    re.I,
)
LIST_JUNK = re.compile(r"(?:\b\d{1,2}\)[ \t]*){3,}")
LONE_MARKERS = re.compile(r"^\s*(?:[-*#>]+|\d+[.)])\s*$", re.M)
REPEATED_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){4,}", re.I)  # "word word word word word" -> "word"

# -- meta-commentary: talk about the text or the task, not the document's subject ------------------------
_TEXT_NOUN = (
    r"(?:text|passage|essay|article|document|story|response|answer|summary|draft|version|prompt|task|"
    r"request|output|rewrite|continuation|paragraph|piece|section|chapter|content)"
)
_NOTE = r"note|n\.\s?b\.?|p\.\s?s\.?|disclaimer|editor'?s note|author'?s note"
META = re.compile(
    "|".join(
        [
            # "Note: This text contains ...", "N.B. the passage ..."
            rf"^\W*(?:{_NOTE})\s*[:\-—–].{{0,160}}?\b(?:this|the|my|your|above|following)\s+{_TEXT_NOUN}\b",
            rf"^\W*(?:{_NOTE})\s*[:\-—–].{{0,160}}?\b(?:grammar|grammatical|spelling|typos?|word count)\b",
            # "This text contains a few grammatical errors."
            r"^\W*(?:this|the above|my)\s+(?:text|passage|response|answer|output|rewrite|version|draft|continuation)"
            r"\s+(?:contains|has been|was (?:written|generated|rewritten|revised)|is (?:written|generated|a rewrite|"
            r"a continuation))\b",
            # "Please check with your grammar book", "Please note that the text ..."
            r"^\W*please\b.{0,120}?\b(?:grammar|spelling|proofread|dictionary|the text|this text|"
            r"the passage|this passage|the prompt)\b",
            # Assistant preambles and sign-offs.
            r"^\W*(?:sure|certainly|of course|absolutely|okay|ok)\s*[!,.]\s*(?:here|below|i)\b",
            rf"^\W*(?:here(?:'s| is| are)|below (?:is|are))\b[^.!?]{{0,80}}\b{_TEXT_NOUN}s?\b[^.!?]{{0,80}}:\s*$",
            r"^\W*(?:here(?:'s| is| are)|below (?:is|are))\b[^.!?]{0,60}\b(?:rewritten|revised|continued|"
            r"requested|improved|expanded|edited|updated)\b",
            r"\bas an? (?:ai|artificial intelligence|language model|large language model|assistant|chatbot)\b",
            r"\bi(?:'m| am) (?:an? )?(?:ai|language model|large language model|chatbot)\b",
            r"\bi (?:cannot|can't|can not|am unable to) (?:fulfil|fulfill|complete|comply|provide|write|generate|"
            r"continue)\b.{0,60}\b(?:request|task|text|story|passage)\b",
            r"\bi(?: have|'ve) (?:rewritten|revised|expanded|continued|edited|tried to (?:write|keep|make))\b",
            r"\bi hope (?:this|that|it) (?:helps|meets|is helpful|works|answers)\b",
            r"\blet me know if you(?:'d| would)? (?:like|want|need) (?:me to|any|more|further|changes|"
            r"another)\b",
            r"\bfeel free to (?:ask|let me know|modify|adjust|change|edit|use)\b",
            r"\bword count\s*[:=]\s*\d",
            # About the text's length against what it was given: "* 2365 more words than in the original text".
            r"\b(?:more|fewer|less|extra)\s+words?\s+than\s+(?:in\s+)?(?:the|your|my|this)\s+(?:original|source|given|"
            r"previous|text|passage|prompt|draft|request|limit)\b",
            # About pictures and pages it does not have: "There are no images on this page".
            r"\bno\s+(?:images?|pictures?|photos?|photographs?|illustrations?|figures?|diagrams?)\b[^.!?]{0,40}?"
            r"\b(?:this|the)\s+(?:page|text|article|post|document|passage|website|site)\b",
            r"\b(?:images?|pictures?|photos?|photographs?|illustrations?|diagrams?)\s+(?:on|in|of|for)\s+this\s+"
            r"(?:page|post|article|website|site|blog)\b",
            r"^\W*(?:image|photo|picture|illustration|caption|photo credit|image credit)\s*\d*\s*:",
            # A web page's furniture: the document has no "us" to contact, no link to click.
            r"\b(?:please\s+)?(?:contact|email|e-mail|call)\s+us\b",
            r"\bclick (?:here|the link|on the link|below)\b",
            r"\b(?:visit|see) our (?:website|site|blog|shop|store|page)\b",
            r"\b(?:subscribe|sign up) (?:to|for) (?:our|the|my) (?:newsletter|channel|blog|mailing list)\b",
            r"\b(?:share|like) (?:this|our) (?:post|article|page)\b",
            r"[\w.+-]+@[\w-]+\.[\w.]{2,}",
        ]
    ),
    re.I,
)
