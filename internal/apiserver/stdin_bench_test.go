package apiserver

import (
	"io"
	"net"
	"testing"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

// BenchmarkStdinHandoff measures handing one 32 KiB input frame to the
// process's stdin pipe: directly (the code before stdinFeed) and through
// stdinFeed (a writer goroutine, so the frame reader can watch for a
// hang-up). Compare with -bench StdinHandoff -count N.
func BenchmarkStdinHandoff(b *testing.B) {
	p := make([]byte, agentapi.DataChunk)
	drain := func(r *io.PipeReader) {
		go func() { _, _ = io.Copy(io.Discard, r) }()
	}
	b.Run("direct", func(b *testing.B) {
		r, w := io.Pipe()
		drain(r)
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			if _, err := w.Write(p); err != nil {
				b.Fatal(err)
			}
		}
		w.Close()
	})
	b.Run("feed", func(b *testing.B) {
		r, w := io.Pipe()
		drain(r)
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		f := newStdinFeed(w)
		defer f.stop()
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			if err := f.feed(c1, p); err != nil {
				b.Fatal(err)
			}
		}
		w.Close()
	})
}
