#!/usr/bin/env bash
# Build the standalone app into build/dist/lmk-studio/ and smoke-test it.
# A separate venv keeps the bundle small: torch's CPU-only wheel (2.13.0, on this machine's disk;
# on other machines pip fetches the CPU wheel from download.pytorch.org/whl/cpu), no timm.
# Usage: bash packaging/build.sh [PYTHON]   (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
venv=build/venv
"$py" -m venv "$venv"
"$venv/bin/pip" install -q "torch==2.13.0" \
  || "$venv/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu
"$venv/bin/pip" install -q . pyinstaller
"$venv/bin/pyinstaller" --noconfirm --log-level WARN --distpath build/dist --workpath build/work \
  packaging/lmk_studio.spec
"$venv/bin/python" packaging/smoke_test.py build/dist/lmk-studio/lmk-studio
