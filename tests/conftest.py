import os

import pytest
import torch

# Under pytest-xdist (`make test`: two workers) each worker gets one thread, so the two do not oversubscribe the cores.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CUDA is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        # The marker, not `"gpu" in item.keywords`: keywords hold the folder names too (a checkout in .../gpu/).
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
