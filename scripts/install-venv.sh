#!/usr/bin/env bash
# Create the virtual environment and install llmstream (editable) with every extra.
#
# uv does the install: it keeps one copy of every wheel in $UV_CACHE_DIR and hard-links
# the files into the venv, so a second checkout (a CI clone, a worktree) gets a complete
# venv in seconds and for a few megabytes of disk instead of ~6 GB (torch's CUDA wheels).
# uv itself comes from PyPI with pip, pinned, into $LLMSTREAM_HOME/tools. Set
# LLMSTREAM_INSTALLER=pip to install with plain pip instead (slower, a full copy per venv).
#
# usage: scripts/install-venv.sh <venv-dir> <python>
set -euo pipefail

venv=${1:-.venv}
python=${2:-python3}
home=${LLMSTREAM_HOME:-$HOME/.cache/llmstream}
uv_version=0.13.9
uv_dir="$home/tools/uv-$uv_version"
uv="$uv_dir/bin/uv"

# A plain venv (it carries pip: `llmstream model pull-default` uses it).
if [ ! -x "$venv/bin/python" ]; then
    echo ">> creating $venv with $python"
    "$python" -m venv "$venv"
fi

if [ "${LLMSTREAM_INSTALLER:-uv}" = pip ]; then
    echo ">> installing llmstream[all] with pip (pip cache: ${PIP_CACHE_DIR:-default})"
    "$venv/bin/python" -m pip install --progress-bar on -e '.[all]'
    exit 0
fi

if [ ! -x "$uv" ]; then
    echo ">> installing uv $uv_version into $uv_dir (once per machine)"
    rm -rf "$uv_dir.partial"
    "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$uv_dir.partial" "uv==$uv_version"
    rm -rf "$uv_dir"
    mv "$uv_dir.partial" "$uv_dir"
fi

export UV_CACHE_DIR=${UV_CACHE_DIR:-$home/uv}
# Trust the system's CA store (as pip does here), and follow a pip index setting if one is made.
export UV_SYSTEM_CERTS=${UV_SYSTEM_CERTS:-1}
if [ -n "${PIP_INDEX_URL:-}" ] && [ -z "${UV_DEFAULT_INDEX:-}" ]; then
    export UV_DEFAULT_INDEX=$PIP_INDEX_URL
fi
echo ">> installing llmstream[all] into $venv with uv (cache: $UV_CACHE_DIR, files hard-linked)"
"$uv" pip install --python "$venv/bin/python" -e '.[all]'
