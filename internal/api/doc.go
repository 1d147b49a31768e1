// Package api is the wire side of the daemon's HTTP/JSON API: the types
// and error codes shared by the server (internal/apiserver) and the typed
// client (internal/client), and the OpenAPI 3 document that describes both
// (openapi.yaml, served at /v1/openapi.yaml; a test in internal/apiserver
// keeps the router and the document in step). It imports neither the
// server nor the sandbox manager, so a client links neither.
//
// Bodies are JSON with unknown fields refused; every error is
// {"error": {"code", "message", "field"}} with a 4xx or 5xx status.
//
// # Exec streams
//
// POST /v1/sandboxes/{id}/exec with "Connection: Upgrade" and
// "Upgrade: ironclaw-exec.v2" starts the process and answers
// "101 Switching Protocols"; the connection then carries frames in the
// agent protocol's framing (agentapi.Frame: a type byte, a 4-byte
// big-endian length, the payload), both ways, so no byte is lost:
//
//	daemon → client: response {exec_id, pid, stdin_window} first, then
//	                 stdout and stderr data frames and response frames
//	                 carrying ExecWindow JSON, then exit (ExitStatus
//	                 JSON), last
//	client → daemon: stdin data frames, stdin-eof, and request frames
//	                 carrying ExecControl JSON (a signal or a resize)
//
// Stdin is flow-controlled by a window: the client sends at most
// stdin_window bytes of input the daemon has not yet granted back with
// ExecWindow frames, which it sends as the process takes its input; a
// client that sends more is cut off. So the daemon always reads the
// connection, and a signal or resize takes effect at once even while the
// process ignores its input. Stdin-eof stays behind the input before it.
//
// A connection that drops before the exit frame kills the process. Without
// the Upgrade header the same request is a buffered exec: stdin from the
// body, output (capped) in the JSON answer.
package api
