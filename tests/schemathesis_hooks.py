"""schemathesis hooks for test_the_api_keeps_its_openapi_contract (loaded by the `st` process via
SCHEMATHESIS_HOOKS): the fuzzing user's API key as an auth provider that follows rotations, so that
fuzzing POST /v1/keys/rotate does not lock every later request out."""

from __future__ import annotations

import os
from typing import Any

import schemathesis

KEY = {"value": os.environ["QUIRE_FUZZ_KEY"]}


@schemathesis.auth(refresh_interval=None)  # no caching: the key changes when it is rotated
class RotatingKey:
    def get(self, case: Any, ctx: Any) -> str:
        return KEY["value"]

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if case.path == "/v1/keys/rotate" and response.status_code == 201:
        KEY["value"] = response.json()["api_key"]
