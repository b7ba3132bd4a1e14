import os

import pytest
import torch

from helpers.scans import tiny_ct

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


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory):
    """A tiny AAPM-layout CT set: 4 patients x 2 slices of 48 x 48."""
    return tiny_ct(tmp_path_factory.mktemp("aapm"), 0, 48, 2, 12, lambda p: 20)
