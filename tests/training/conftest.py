"""Small real inputs for the training tests: procedural scenes written as PROTOCOL.md case folders.

The image is flat-shaded with the project's silhouette rasteriser instead of
Blender (nearer objects painted last, so they occlude), which keeps these
tests free of bpy and of ../shared while reading cases through the case format.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from casemaker import CASE_SIZES, write_case

@pytest.fixture(scope="session")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of a few small case folders."""
    root = tmp_path_factory.mktemp("cases")
    for index, count in enumerate(CASE_SIZES):
        write_case(root / f"case_{index:03d}", count, first_seed=10 * index)
    return root


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train on one thread: these tiny models gain nothing from a second one, and on a shared
    machine a descheduled sibling thread makes every op wait (tens of times slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
