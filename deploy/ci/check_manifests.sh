#!/usr/bin/env bash
# Validates compose.yaml and renders + validates the Kubernetes overlays, offline, with the
# pinned tools of deploy/ci/tools.txt (see check_manifests.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/ci/install_tools.sh
TOOLS="$PWD/.cache/images/tools"
PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/python" deploy/ci/check_manifests.py
