#!/usr/bin/env bash
# Build the standalone app into build/dist/lmk-studio/ and smoke-test it.
#
# A separate venv keeps the bundle small: torch's CPU-only build (no NVIDIA libraries, which would
# add several GB), no timm. The CPU build is asked for first, from PyTorch's CPU index (plus any
# local wheel folder pip is configured with); a plain `pip install torch` would fetch the CUDA
# build on most Linux machines. After the build, the bundle is checked for CUDA libraries.
#
# Usage:  bash packaging/build.sh [PYTHON]                 (default python3; CPU-only build)
#         LMK_TORCH=cuda bash packaging/build.sh [PYTHON]  (explicit CUDA build: torch from PyPI;
#                                                           expect a bundle several GB larger)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
variant=${LMK_TORCH:-cpu}
torch_version=${LMK_TORCH_VERSION:-2.13.0}
venv=build/venv
"$py" -m venv "$venv"
pip="$venv/bin/pip"
case "$variant" in
  cpu)
    "$pip" install -q "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu \
      || { echo "build.sh: the CPU build of torch $torch_version could not be installed" \
                "(no network to download.pytorch.org and no local CPU wheel)" >&2; exit 1; }
    ;;
  cuda)
    "$pip" install -q "torch==$torch_version"
    ;;
  *)
    echo "build.sh: LMK_TORCH must be cpu or cuda, not '$variant'" >&2; exit 2 ;;
esac
if [ "$variant" = cpu ]; then
  # the wheel must be the CPU build whatever index answered
  "$venv/bin/python" -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else \
'torch ' + torch.__version__ + ' is a CUDA build (CUDA ' + str(torch.version.cuda) + ')')"
fi
"$pip" install -q . pyinstaller
"$venv/bin/pyinstaller" --noconfirm --log-level WARN --distpath build/dist --workpath build/work \
  packaging/lmk_studio.spec
if [ "$variant" = cpu ]; then
  bash packaging/check_no_cuda.sh build/dist/lmk-studio
fi
"$venv/bin/python" packaging/smoke_test.py build/dist/lmk-studio/lmk-studio
