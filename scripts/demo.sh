#!/usr/bin/env bash
# The main job on the local engine: provision an engine and the example image
# if needed, install pytest-lrun, and dispatch the example test directories.
# The examples run with their own settings (examples/pytest.ini), never the
# project's test-suite settings, so nothing beyond `pip install .` is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/provision.sh)"
python3 -m pip install -q -e .
exec python3 -m pytest -c examples/pytest.ini --lrun-machine=local --lrun-image=lrun-python:bookworm \
  examples/passing examples/failing "$@"
