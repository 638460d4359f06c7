#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (CPU only, offline). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
ruff check .
exec python -m pytest -q "$@"
