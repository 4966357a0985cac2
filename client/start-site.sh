#!/usr/bin/env bash
# Check, then start this site's node in the foreground (for systemd or a terminal).
# Usage: ./start-site.sh [site.toml]
set -euo pipefail
cd "$(dirname "$0")"
config="${1:-site.toml}"
lhs-fed site check --config "$config"
exec lhs-fed site start --config "$config"
