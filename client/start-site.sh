#!/usr/bin/env bash
# Check, then start this site's node in the foreground (for a terminal; systemd runs
# `lhs-fed site start` directly, see lhs-fed-site.service). `site start` repeats the
# checks itself; running `site check` first prints each one that passed.
# Usage: ./start-site.sh [site.toml] [--detach]
#   LHS_FED=/opt/lhs-fed/venv/bin/lhs-fed ./start-site.sh   # if lhs-fed is not on PATH
# Run it as the user that owns the state and governance folders (sudo -u lhsfed ./start-site.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [[ $# -gt 0 ]]; then
    config="$(realpath -- "$1")"   # a path given is taken from the caller's folder
    shift
else
    config="${here}/site.toml"
fi
cd "${here}"
lhs_fed="${LHS_FED:-lhs-fed}"
if ! command -v "${lhs_fed}" >/dev/null; then
    echo "error: ${lhs_fed} not found; activate the venv or set LHS_FED=/path/to/lhs-fed" >&2
    exit 2
fi
"${lhs_fed}" site check --config "${config}"
exec "${lhs_fed}" site start --config "${config}" "$@"
