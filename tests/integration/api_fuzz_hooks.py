"""Schemathesis hooks for tests/integration/test_api_fuzz.py (loaded with SCHEMATHESIS_HOOKS): every
error answer is JSON naming the problem, and every response is logged for the test to count."""

from __future__ import annotations

import os
from typing import Any

import orjson
import schemathesis

LOG_ENV = "FLASHSALE_FUZZ_LOG"


@schemathesis.check
def error_is_json_naming_the_problem(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx or 5xx answer is a JSON object whose ``error`` is a non-empty string."""
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "ab") as fh:  # a shrink may re-run a case: the test reads a multiset of answers
            fh.write(orjson.dumps({"method": case.method, "path": case.formatted_path,
                                   "status": response.status_code}) + b"\n")
    if response.status_code < 400:
        return None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.content[:200]!r}") from None
    if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
        raise AssertionError(f"{response.status_code} answer names no error: {response.content[:200]!r}")
    return None
