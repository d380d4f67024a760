#!/usr/bin/env bash
# Install the real peers our tests check against, each in its own virtual environment, because
# their pins clash with ours: lerobot 0.4.4 (v3.0, pulls torch), lerobot 0.3.3 with
# datasets 3.6 (the v2.1 format and pins openpi uses), and openpi-client 0.1.2 (pins numpy<2,
# which Ray's pyarrow refuses; 0.1.2 imports typing_extensions without declaring it).
# Reused when already present.
set -euo pipefail
home="${RECAP_PEER_VENVS:-$HOME/.cache/recap-ray/venvs}"
mkdir -p "$home"
install() {  # name, then pip requirements
  local name=$1; shift
  if [ -x "$home/$name/bin/python" ] && [ -f "$home/$name/.complete" ]; then return; fi
  rm -rf "$home/$name"
  python3 -m venv "$home/$name"
  "$home/$name/bin/pip" install -q --disable-pip-version-check "$@"
  touch "$home/$name/.complete"
}
install lerobot "lerobot==0.4.4" &
install lerobot-v21 "lerobot==0.3.3" "datasets==3.6.0" &
install openpi-client "openpi-client==0.1.2" "typing_extensions" "numpy<2" &
wait %1 && wait %2 && wait %3
