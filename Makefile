# The two commands of the README.
#   make demo  - set up the environment if needed, then run the main job on the demo data
#   make test  - set up the environment if needed, then run the whole test suite
.PHONY: demo test env

env:
	@bash scripts/setup_env.sh >/dev/null

demo:
	@bash scripts/env_run.sh python tools/demo.py

test:
	@bash scripts/env_run.sh python -m pytest tests -q -p no:cacheprovider
