#!/usr/bin/env bash
# Start the coordinating centre in the foreground (for systemd or a terminal).
# Usage: ./start-server.sh [server.toml]
set -euo pipefail
cd "$(dirname "$0")"
exec lhs-fed server start --config "${1:-server.toml}"
