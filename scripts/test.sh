#!/usr/bin/env bash
# The test command: set-up (idempotent), lint, type-check, then the whole test suite.
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m "not slow"` to skip the slow end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
