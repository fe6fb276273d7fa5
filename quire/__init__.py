"""The shell: the `quire` command, the embedded stack and its supervisor, the API client, the local model."""
