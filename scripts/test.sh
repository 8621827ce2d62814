#!/usr/bin/env bash
# The whole test suite, as CI runs it: provision the two engines and images (and
# the services: PostgreSQL, sshd, BuildGrid, whose smoke test runs first), check
# the README's first command from a bare virtual environment
# (scripts/demo-check.sh), then tox runs the tests (py), ruff (lint) and mypy
# (type). Where a Python 3.10 interpreter is at hand (pyenv), the whole suite
# runs on it too: 3.10 is the oldest Python pytest-lrun supports.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/provision.sh)"
# The REAPI server the tests dispatch to. BuildGrid answers UNAVAILABLE for a while after its
# database restarted (a cool-down of its connection pool): the smoke test is tried up to 3 times.
smoke() { "$LRUN_BUILDGRID_VENV/bin/python" scripts/buildgrid_smoke.py >&2; }
smoke || { sleep 10; smoke; } || { sleep 20; smoke; }
scripts/demo-check.sh
export LRUN_REQUIRE_DOCKER=${LRUN_REQUIRE_DOCKER:-1} LRUN_REQUIRE_POSTGRES=${LRUN_REQUIRE_POSTGRES:-1} LRUN_REQUIRE_REAPI=${LRUN_REQUIRE_REAPI:-1}
python3 -m tox --version >/dev/null 2>&1 || python3 -m pip install -q tox
python3 -m tox run -e py,lint,type -- "$@"
py310=$(pyenv prefix 3.10 2>/dev/null || true)
if [ -n "$py310" ] && [ -x "$py310/bin/python3.10" ]; then
  PATH="$PATH:$py310/bin" python3 -m tox run -e py310
else
  echo "test.sh: no Python 3.10 here; the 3.10 run is left out" >&2
fi
