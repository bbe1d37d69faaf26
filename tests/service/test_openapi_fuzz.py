"""The served OpenAPI description against the service (schemathesis, every check): no failure of any kind.

`schemathesis run --checks all` reads the repo's schemathesis.toml (why 400 is an expected answer to a
schema-valid submission); the run is bounded and seeded, so it is repeatable.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("schemathesis")

EXAMPLES_PER_OPERATION = 10


def test_schemathesis_finds_no_failure_with_every_check(service, repo_root, tmp_path):
    cli = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"  # what its script runs
    command = [sys.executable, "-c", cli, "run", f"{service.url}/openapi.json",
               "-H", f"Authorization: Bearer {service.state['token']}", "--checks", "all",
               "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "1", "--no-color"]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=600,
                            env={"HOME": str(tmp_path), "PATH": ""})
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert "Selected: 10/10" in summary and "Tested: 10" in summary  # every operation was exercised
    assert " passed" in summary and "failed" not in summary.split("SUMMARY")[-1]
    assert service.get("/v1/health").status_code == 200  # and the service is still up
