// Package apiserver serves the daemon's HTTP/JSON API (the wire types are
// in internal/api): it decodes requests strictly, maps them onto the
// sandbox manager (internal/daemon), maps its errors onto the API's error
// codes, streams exec sessions, and counts requests for Prometheus.
//
// The daemon listens on a Unix socket (mode 0600, or 0660 for a group) and
// logs each request with its peer's credentials (SO_PEERCRED); it may also
// listen on TCP, but only with a bearer token.
package apiserver
