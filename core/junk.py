"""What junk looks like: the patterns of the gate's rules that read a model's answer as text (chat
tokens, markup that is not the document's, headings, empty list markers, a word said again and
again, talk about the text or the task). ``core.gate`` runs them, records what each cut, and holds
the rules that need more than a pattern.
"""

from __future__ import annotations

import re

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
        ]
    ),
    re.I,
)
