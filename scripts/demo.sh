#!/usr/bin/env bash
# The main job on the local engine: provision an engine and the example image
# if needed, install pytest-lrun, and dispatch the example test directories.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/provision.sh)"
python3 -m pip install -q -e .
exec python3 -m pytest --lrun-machine=local --lrun-image=lrun-python:bookworm \
  -o junit_logging=system-out examples/passing examples/failing "$@"
