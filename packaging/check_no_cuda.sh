#!/usr/bin/env bash
# Fail when a CPU-only bundle holds CUDA / NVIDIA libraries (they cost GB and need a driver).
# Usage: bash packaging/check_no_cuda.sh DIR
set -euo pipefail
dir=${1:?usage: check_no_cuda.sh DIR}
found=$(find "$dir" -type f \( -iname 'libcuda*' -o -iname 'libcudart*' -o -iname 'libcublas*' \
  -o -iname 'libcudnn*' -o -iname 'libcufft*' -o -iname 'libcurand*' -o -iname 'libcusolver*' \
  -o -iname 'libcusparse*' -o -iname 'libnccl*' -o -iname 'libnvrtc*' -o -iname 'libnvjitlink*' \
  -o -iname 'libnvToolsExt*' -o -iname 'libtorch_cuda*' -o -iname 'cudnn*.dll' \
  -o -iname 'cublas*.dll' -o -iname 'cudart*.dll' -o -iname 'nvrtc*.dll' \) | sort || true)
if [ -n "$found" ]; then
  echo "check_no_cuda: CUDA libraries in the CPU-only bundle $dir:" >&2
  echo "$found" | head -20 >&2
  echo "($(echo "$found" | wc -l) file(s); rebuild with the CPU build of torch)" >&2
  exit 1
fi
echo "check_no_cuda: no CUDA library in $dir"
