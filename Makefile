# The two commands of the README. Both install what is missing first (tools/install.sh).
PY := .venv/bin/python

.PHONY: install demo test

install:
	bash tools/install.sh

demo: install
	bash tools/demo.sh

test: install
	$(PY) -m pytest tests
