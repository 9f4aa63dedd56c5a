# sagews: the two commands are `make up` (deploy to this machine) and `make test` (everything).
SHELL := /bin/bash
VENV  ?= .venv
S     ?= default

.PHONY: up test test-unit lint molecule bench venv image lock clean help

help:
	@echo "make up         deploy sagews to this machine (ansible-playbook site.yml, inventory/local)"
	@echo "make test       everything: lint, pytest, every Molecule scenario (prints a timing table)"
	@echo "make test-unit  pytest only (fast inner loop)"
	@echo "make lint       ruff, yamllint, ansible-lint --profile production"
	@echo "make molecule S=NAME   one Molecule scenario (molecule test -s NAME)"
	@echo "make bench      benchmarks in bench/, results appended to docs/benchmarks.md"

up:
	bash tests/harness/up.sh

test:
	bash tests/harness/run-tests.sh

test-unit:
	SETUP="apt venv" STAGES="pytest" bash tests/harness/run-tests.sh

lint:
	SETUP="venv" STAGES="ruff yamllint ansible-lint" bash tests/harness/run-tests.sh

molecule:
	SETUP="apt docker venv image" STAGES="molecule:$(S)" bash tests/harness/run-tests.sh

bench:
	SETUP="apt venv" bash bench/run.sh

lock:
	bash requirements/lock.sh

clean:
	rm -rf build .pytest_cache .ruff_cache
