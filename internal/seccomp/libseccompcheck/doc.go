// Package libseccompcheck holds only a test: it cross-checks the BPF that
// package seccomp generates against the BPF libseccomp generates for the
// same resolved profiles, running both in golang.org/x/net/bpf's VM. It
// needs cgo and libseccomp-dev, so it is behind the build tags
// "cgo && libseccomp":
//
//	go test -tags libseccomp ./internal/seccomp/libseccompcheck/
package libseccompcheck
