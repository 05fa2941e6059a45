# Sourced by scripts/setup and scripts/setup-vllm: TORCH, pip's arguments for the torch this project
# is tested with, as a CPU build. On Linux, PyPI's torch wheel is the CUDA build (gigabytes of CUDA
# libraries), so the "+cpu" build is taken from PyTorch's CPU index; elsewhere (macOS, Windows) PyPI's
# wheel is already the CPU build. SELAR_TORCH replaces the requirement (e.g. "torch==2.13.0" for a
# CUDA build on a GPU machine), SELAR_TORCH_INDEX the CPU index.
TORCH_VERSION=2.13.0
if [ -n "${SELAR_TORCH:-}" ]; then
  TORCH=("$SELAR_TORCH")
elif [ "$(uname -s)" = Linux ]; then
  TORCH=("torch==$TORCH_VERSION+cpu" --extra-index-url "${SELAR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
else
  TORCH=("torch==$TORCH_VERSION")
fi
