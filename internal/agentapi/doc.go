// Package agentapi is the protocol between the host and ironclaw-agent, the
// guest agent that runs inside every long-lived sandbox, and the host-side
// client of that protocol.
//
// One byte stream connects the host to the agent: a Unix socket bind-mounted
// into a jail, a virtio-serial port in a QEMU guest, or a vsock port reached
// through Firecracker's host-initiated "CONNECT <port>" handshake. On it the
// host first sends a Hello frame carrying the protocol Version and the
// per-sandbox token; the agent answers with a HelloReply. After that both
// sides run a yamux session over the same connection (the host is the yamux
// client), so several execs and file transfers share it, each in its own
// stream with yamux's per-stream flow control: a slow reader stalls only its
// own stream, and every buffer is bounded by the stream window.
//
// Every stream carries frames (see Frame): a 1-byte type, a 4-byte
// big-endian length and the payload. The first frame of a stream is a
// Request; control payloads are JSON (encoding/json), data payloads are raw
// bytes. Frames are read with io.ReadFull straight from the connection, so a
// frame decoder never holds bytes that belong to whoever reads next.
package agentapi
