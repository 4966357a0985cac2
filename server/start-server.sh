#!/usr/bin/env bash
# Start the coordinating centre in the foreground (for a terminal; systemd runs
# `lhs-fed server start` directly, see lhs-fed-server.service).
# Usage: ./start-server.sh [server.toml] [--detach]
#   LHS_FED=/opt/lhs-fed/venv/bin/lhs-fed ./start-server.sh   # if lhs-fed is not on PATH
# Run it as the user that owns the state folder (sudo -u lhsfed ./start-server.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [[ $# -gt 0 ]]; then
    config="$(realpath -- "$1")"   # a path given is taken from the caller's folder
    shift
else
    config="${here}/server.toml"
fi
cd "${here}"
lhs_fed="${LHS_FED:-lhs-fed}"
if ! command -v "${lhs_fed}" >/dev/null; then
    echo "error: ${lhs_fed} not found; activate the venv or set LHS_FED=/path/to/lhs-fed" >&2
    exit 2
fi
exec "${lhs_fed}" server start --config "${config}" "$@"
