// Package mcpgw is IronClaw's MCP gateway: it reads the usual mcpServers
// configuration, starts every stdio server in its own sandbox (by executing
// `ironclaw run` with the server's mounts, egress allowlist, seccomp profile
// and limits), reaches remote servers over streamable HTTP or legacy SSE,
// and exposes them all as one MCP server whose tools are namespaced
// "server__tool".
//
// Every tools/call goes through the Approval Cliff (package approval):
// green calls run, red calls wait for a person. Every call is written to
// the audit log (package store) with its arguments redacted. The protocol
// is the official Go SDK's (github.com/modelcontextprotocol/go-sdk); this
// package defines no protocol types of its own.
package mcpgw
