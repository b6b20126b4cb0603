# netdiag: `make demo` and `make test` need root (they install packages and load eBPF).
.PHONY: setup demo test lint test-unit test-integration test-kernel test-vm clean

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	bash scripts/test.sh

lint: setup
	bash scripts/lint.sh

test-unit: setup
	.venv/bin/python -m pytest tests/unit -q -rs

test-integration: setup
	.venv/bin/python -m pytest tests/integration -q -rs

test-kernel: setup
	.venv/bin/python -m pytest tests/kernel -q -rs

# KERNEL=6.1 or KERNEL=5.10: one guest kernel's lane; both when unset (`make test` runs 6.1's)
VM_TESTS = $(if $(filter 6.1,$(KERNEL)),tests/vm/test_vm_lane.py,$(if $(filter 5.10,$(KERNEL)),tests/vm/test_vm_lane_510.py,tests/vm))
test-vm: setup
	.venv/bin/python -m pytest $(VM_TESTS) -q -rs

clean:
	rm -rf results .pytest_cache
