#!/usr/bin/env bash
# Installs the pinned tools of deploy/ci/tools.txt into .cache/images/tools (once per change).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="$PWD/.cache/images/tools"
if [ ! -x "$TOOLS/bin/kubectl" ] || ! cmp -s deploy/ci/tools.txt "$TOOLS/tools.txt"; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check -r deploy/ci/tools.txt
    cp deploy/ci/tools.txt "$TOOLS/tools.txt"
fi
