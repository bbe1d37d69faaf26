"""Property-based run over the served OpenAPI spec (schemathesis): no request may cause a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES_PER_OPERATION = 12


def exercise(operation, mode: GenerationMode, service, seen: list[tuple[str, int]]) -> None:
    """Send generated requests for one operation; any 5xx fails."""

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        response = case.call(base_url=service.url, headers=service.headers(), timeout=60)
        seen.append((operation.label, response.status_code))
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"

    try:
        check()
    except Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE  # an operation without inputs has no invalid form


def test_no_request_causes_a_server_error(service):
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json", headers=service.headers(), timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10
    seen: list[tuple[str, int]] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            exercise(operation, mode, service, seen)
    assert {label for label, _ in seen} == {op.label for op in operations}  # every operation was really exercised
    assert service.get("/v1/health").status_code == 200  # and the service is still up
