"""One local Ray instance for every test here (Ray takes seconds to start): two CPUs, as
the tests' machines have."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    from cnnc.distributed.session import connect

    connect(num_cpus=2)
    yield ray
    ray.shutdown()
