#!/usr/bin/env bash
# The test command (README and .ci/run): install recap-ray and the peer venvs, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
bash tests/install_peers.sh
python3 -m pytest -q "$@"
