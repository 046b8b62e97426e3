#!/bin/sh
# Runs the whole test suite (unit + integration; integration needs root and skips
# with the reason otherwise).  Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -rs "$@"
