#!/usr/bin/env bash
# Wheels for a GPU machine with no network that already has PyTorch (a CUDA + PyTorch image: torch, torchaudio,
# numpy, tokenizers, huggingface_hub, safetensors, pyarrow, tensorboard, pyyaml, tqdm, scipy, typer ...): the packages
# our code needs on top, at the versions requirements.txt pins, for the target's Python.
#
#   bash benchmarks/gpu_kit.sh [WHEEL_DIR=.whl] [PYTHON_VERSION=3.12]
#
# On the GPU machine (from the repository root, with WHEEL_DIR copied there):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   bash benchmarks/gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
pyver=${2:-3.12}
source launch/_env.sh >/dev/null
mkdir -p "$dest"
pin() { grep -E "^$1==" requirements.txt | head -1; }
installed() { python -c "import importlib.metadata as m, sys; print(sys.argv[1] + '==' + m.version(sys.argv[1]))" "$1"; }

# Compiled packages, for the target's Python and platform (pinned ones at requirements.txt's version, the rest at the
# version installed in .venv, which the tests ran with).
binary=("$(pin espeakng-loader)" "$(installed pydantic_core)" "$(installed soundfile)" "$(installed cffi)")
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d "$dest" "${binary[@]}"
# Pure-Python packages: a published wheel, or one built here from the source archive (argbind, DeepSpeed). DeepSpeed
# builds without its C++/CUDA ops, which it JIT-compiles when used.
pure=("$(pin transformers)" "$(pin peft)" "$(pin descript-audio-codec)" "$(pin deepspeed)")
for dist in pydantic annotated-types typing-inspection hjson descript-audiotools argbind docstring_parser julius \
    ffmpy flatten-dict randomname importlib_resources pycparser; do
    pure+=("$(installed "$dist")")
done
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w "$dest" "${pure[@]}"
du -sh "$dest"
ls "$dest"
