"""The local model's server: llama.cpp's OpenAI server (``llama_cpp.server``) with one chat format
more, ``document``: ``python -m quire.localserver`` takes the same arguments.

Gemma 3 270M is a base model, and Quire's prompts for it (prompt style ``document``) are documents
to continue: a title, an opening, headings, the text so far. Through Gemma's chat template ("<start_of_turn>user
... <start_of_turn>model") the model answered a chat turn instead: it said the prompt back, restarted
the document, looped, and the gate cut 82% of its words (bench/RESULTS.md, issue 29). The
``document`` format hands the model the messages' text as it is, to continue; system messages are
left out, as Gemma's own template leaves them out.
"""

from __future__ import annotations

from typing import Any

from llama_cpp import llama_chat_format
from llama_cpp.server.__main__ import main

DOCUMENT = "document"


@llama_chat_format.register_chat_format(DOCUMENT)
def format_document(messages: list[Any], **kwargs: Any) -> llama_chat_format.ChatFormatterResponse:
    """The conversation as one text: its user and assistant messages, a blank line apart."""
    parts = [m["content"] for m in messages if m["role"] != "system" and isinstance(m.get("content"), str)]
    return llama_chat_format.ChatFormatterResponse(prompt="\n\n".join(parts))


if __name__ == "__main__":
    main()
