#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the built-in demo training (CPU, or GPU where there is one).
# Extra arguments go to `python -m ds_train demo`, e.g. --steps 50 --output-dir runs/demo2 train.lr=1e-3
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec python -m ds_train demo "$@"
