package apiserver

import (
	"encoding/json"
	"io"
	"net"
	"testing"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/api"
)

// BenchmarkStdinHandoff measures handing one 32 KiB input frame to the
// process's stdin pipe: directly (a frame reader that writes each frame
// itself, and so waits for the process) and through stdinQueue (a
// writer goroutine that grants each chunk back to the client, which
// keeps to the window, so the frame reader never waits). Compare with
// -bench StdinHandoff -count N.
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
	b.Run("queue", func(b *testing.B) {
		r, w := io.Pipe()
		drain(r)
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		sw := &streamWriter{ready: make(chan struct{}), conn: c1}
		close(sw.ready)
		credits := make(chan int, api.ExecStdinWindow/len(p)+1)
		go func() {
			for {
				f, err := agentapi.ReadFrame(c2, agentapi.MaxFrame)
				if err != nil {
					return
				}
				var win api.ExecWindow
				if err := json.Unmarshal(f.Payload, &win); err != nil {
					return
				}
				credits <- win.Stdin
			}
		}()
		q := newStdinQueue()
		go q.pump(w, sw)
		defer q.close()
		held := 0
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			for held+len(p) > api.ExecStdinWindow {
				held -= <-credits
			}
			if !q.put(p) {
				b.Fatal("put over the window")
			}
			held += len(p)
		}
		w.Close()
	})
}
