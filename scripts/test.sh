#!/usr/bin/env bash
# The whole test suite, as CI runs it: provision the two engines and images,
# then tox runs the tests (py), ruff (lint) and mypy (type).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/provision.sh)"
export LRUN_REQUIRE_DOCKER=${LRUN_REQUIRE_DOCKER:-1}
command -v tox >/dev/null 2>&1 || python3 -m pip install -q tox
exec python3 -m tox run -e py,lint,type -- "$@"
