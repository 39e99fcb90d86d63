#!/usr/bin/env bash
# Idempotent set-up: ngspice (system package) and a virtual environment with pinned dependencies.
set -euo pipefail
venv="${1:-.venv}"

if ! command -v ngspice >/dev/null 2>&1 || ! ls /usr/lib/*/libngspice.so* /usr/lib/libngspice.so* >/dev/null 2>&1; then
  echo "setup: installing ngspice and libngspice0 with apt-get"
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; else
      echo "setup: ngspice is missing and this user cannot install packages." >&2
      echo "       Ask an administrator to run: apt-get install -y ngspice libngspice0" >&2
      echo "       (or set NGSPICE_LIBRARY_PATH to an existing libngspice.so)" >&2
      exit 1
    fi
  else SUDO=""; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq ngspice libngspice0 >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# torch==2.13.0 is pinned in pyproject.toml; on these machines it resolves to the CPU build.
"$venv/bin/python" -m pip install -q -e ".[dev]"  # the package plus the test/lint tools
echo "setup: ok ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
