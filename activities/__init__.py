"""Activities: one step each (plan, write/extend/check/commit a chunk, stitch, finalize), the LLM
client and the text tools. Everything here may do I/O; nothing here decides what runs next."""
