# The two commands of the README. Both install what they need into .venv first.
.PHONY: serve test lint

serve:
	scripts/serve.sh

test:
	scripts/test.sh

lint:
	scripts/bootstrap.sh serve,train,dev,brain
	.venv/bin/ruff check .
