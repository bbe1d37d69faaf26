"""The generated example cases shipped inside the package (for the README demo and tests without ../shared)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from casekit import assert_valid_case


def _examples() -> Path:
    return Path(str(resources.files("scenewright") / "assets" / "examples"))


def test_shipped_examples_are_valid_cases_and_small() -> None:
    folders = sorted(p for p in _examples().iterdir() if p.is_dir())
    assert len(folders) >= 3
    total = sum(f.stat().st_size for f in _examples().rglob("*") if f.is_file())
    assert total < 2 * 1024 * 1024
    for case in folders:
        scene = assert_valid_case(case)
        assert scene["camera"]["resolution"] == [512, 512]
