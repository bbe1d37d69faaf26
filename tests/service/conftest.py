"""Fixtures that run the real service: `python -m scenewright serve` on a free loopback port with a tiny random model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from .servicekit import ServiceProcess, png_bytes, scene_arrays


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scenewright.pipeline import make_tiny_random_pipeline

    folder = tmp_path_factory.mktemp("tiny-model")
    make_tiny_random_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def make_service(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path):
    """Factory: start a service on a data dir (a fresh one unless given); every one is stopped at the end."""
    started: list[ServiceProcess] = []

    def make(data_dir: Path | None = None, extra_args: tuple[str, ...] = ()) -> ServiceProcess:
        data_dir = data_dir or tmp_path_factory.mktemp("data")
        service = ServiceProcess(data_dir, tiny_model, data_dir.parent / f"{data_dir.name}-service.log", extra_args)
        started.append(service)
        return service.start()

    yield make
    for service in started:
        service.kill()


@pytest.fixture(scope="session")
def service(make_service) -> ServiceProcess:
    """One shared service for the tests that do not restart it (two extra Host names for test_allow_host)."""
    return make_service(extra_args=("--allow-host", "tunnel.example:9999", "--allow-host", "gpubox"))


@pytest.fixture(scope="session")
def scene() -> dict[str, bytes]:
    rgb, seg = scene_arrays(3)
    masks = [png_bytes(((seg == k + 1) * 255).astype(np.uint8)) for k in range(3)]
    return {"image": png_bytes(rgb), "seg": png_bytes(seg), "masks": masks}
