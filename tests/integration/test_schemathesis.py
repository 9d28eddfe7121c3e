"""Property-based API testing against the app's own OpenAPI schema: no input may produce a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.integration

EXAMPLES = 12  # per operation: bounded, the whole test stays within a minute or two


def test_no_input_gives_a_server_error(server):
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures, calls = [], []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/route", "/v1/adapters"}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case):
            response = case.call(base_url=server, timeout=120)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code}: "
                    f"{response.text[:200]}"
                )

        check()
    assert len(calls) >= 2 * len(operations)
    assert not failures, failures[:5]
