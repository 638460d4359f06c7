# Sourced by the training scripts (train_single_node.sh, train_multi_node.sh). It uses the Python environment the
# caller already has when its `python` imports deepspeed, transformers and ds_train (this repository's ds_train: the
# repository is put first on PYTHONPATH), e.g. an activated venv or conda env; otherwise it sets up and activates the
# repository's .venv (_env.sh). It never changes directory: relative config, data and output paths are the caller's.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if command -v python >/dev/null && python -c 'import deepspeed, transformers, ds_train' >/dev/null 2>&1; then
  echo "[setup] using the active Python environment: $(command -v python)"
  export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
else
  # shellcheck source=launch/_env.sh
  source "$ROOT/launch/_env.sh"
fi
