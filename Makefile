# netdiag: `make demo` and `make test` need root (they install packages and load eBPF).
.PHONY: setup demo test test-unit test-kernel test-vm clean

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	bash scripts/test.sh

test-unit: setup
	.venv/bin/python -m pytest tests/unit -q -rs

test-kernel: setup
	.venv/bin/python -m pytest tests/kernel -q -rs

test-vm: setup
	.venv/bin/python -m pytest tests/vm -q -rs

clean:
	rm -rf results .pytest_cache
