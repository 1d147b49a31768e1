package agentapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
)

func TestFrameRoundTripReadsNoFurther(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, FrameStdout, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(&buf, FrameRequest, Request{Op: OpHealth}); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("TRAILING")
	f, err := ReadFrame(&buf, 0)
	if err != nil || f.Type != FrameStdout || string(f.Payload) != "hello" {
		t.Fatalf("first frame = %v %q, %v", f.Type, f.Payload, err)
	}
	f, err = ReadFrame(&buf, 0)
	if err != nil {
		t.Fatal(err)
	}
	var r Request
	if err := DecodeJSON(f, FrameRequest, &r); err != nil || r.Op != OpHealth {
		t.Fatalf("request = %+v, %v", r, err)
	}
	if rest := buf.String(); rest != "TRAILING" {
		t.Fatalf("bytes after the frames = %q, want TRAILING: the decoder over-read", rest)
	}
}

func TestReadFrameRejects(t *testing.T) {
	cases := map[string][]byte{
		"unknown type":   {99, 0, 0, 0, 0},
		"zero type":      {0, 0, 0, 0, 0},
		"oversized":      {byte(FrameStdout), 0x7f, 0xff, 0xff, 0xff},
		"truncated head": {byte(FrameStdout), 0},
		"truncated body": {byte(FrameStdout), 0, 0, 0, 9, 'a'},
		"over given max": append([]byte{byte(FrameHello), 0, 0, 0x10, 1}, make([]byte, 4097)...),
	}
	for name, in := range cases {
		max := 0
		if name == "over given max" {
			max = maxHelloFrame
		}
		if _, err := ReadFrame(bytes.NewReader(in), max); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: err = %v, want ErrFrame", name, err)
		}
	}
	if _, err := ReadFrame(bytes.NewReader(nil), 0); err != io.EOF {
		t.Errorf("empty input: err = %v, want io.EOF", err)
	}
}

func TestDecodeJSONStrict(t *testing.T) {
	for _, p := range []string{`{"op":"health","bogus":1}`, `{"op":"health"} {}`, `[`, `{"exec":{"argv":"x"}}`} {
		var r Request
		if err := DecodeJSON(Frame{Type: FrameRequest, Payload: []byte(p)}, FrameRequest, &r); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: err = %v, want ErrFrame", p, err)
		}
	}
	var r Request
	if err := DecodeJSON(Frame{Type: FrameResponse, Payload: []byte(`{}`)}, FrameRequest, &r); !errors.Is(err, ErrFrame) {
		t.Errorf("wrong frame type accepted: %v", err)
	}
}

func TestWriteFrameRejectsOversized(t *testing.T) {
	if err := WriteFrame(io.Discard, FrameStdout, make([]byte, MaxFrame+1)); !errors.Is(err, ErrFrame) {
		t.Fatalf("err = %v, want ErrFrame", err)
	}
}

func TestTokenEqual(t *testing.T) {
	if !TokenEqual([]byte("abc"), []byte("abc")) || TokenEqual([]byte("abc"), []byte("abd")) ||
		TokenEqual([]byte("abc"), []byte("abcd")) || TokenEqual(nil, nil) {
		t.Fatal("TokenEqual is wrong")
	}
}

// FuzzReadFrame feeds arbitrary bytes to the frame decoder: it must never
// panic, never accept an unknown type or an oversized frame, and a frame it
// accepts must re-encode to exactly the bytes it consumed.
func FuzzReadFrame(f *testing.F) {
	var b bytes.Buffer
	_ = WriteJSON(&b, FrameRequest, Request{Op: OpExec, Exec: &ExecSpec{Argv: []string{"sh"}}})
	f.Add(b.Bytes())
	f.Add([]byte{byte(FrameStdinEOF), 0, 0, 0, 0})
	f.Add([]byte{byte(FrameStdout), 0xff, 0xff, 0xff, 0xff, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		fr, err := ReadFrame(r, 0)
		if err != nil {
			return
		}
		if !fr.Type.valid() || len(fr.Payload) > MaxFrame {
			t.Fatalf("accepted bad frame type %d len %d", fr.Type, len(fr.Payload))
		}
		consumed := len(in) - r.Len()
		var out bytes.Buffer
		if err := WriteFrame(&out, fr.Type, fr.Payload); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), in[:consumed]) {
			t.Fatalf("re-encoding differs from consumed bytes")
		}
	})
}

// FuzzDecodeMessages feeds arbitrary payloads to every control-message
// decoder: errors are fine, panics are not.
func FuzzDecodeMessages(f *testing.F) {
	f.Add([]byte(`{"op":"exec","exec":{"argv":["sh","-c","echo"],"tty":true,"rows":24,"cols":80}}`))
	f.Add([]byte(`{"op":"write","file":{"path":"../../etc/passwd","mode":420,"limit":-1}}`))
	f.Add([]byte(`{"version":1,"token":"x"}`))
	f.Add([]byte(`{"code":-1,"signal":9}`))
	f.Add([]byte(`{"list":[{"name":"a","size":1,"mode":2147484141,"mod_time":"2024-01-01T00:00:00Z"}]}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		var req Request
		_ = DecodeJSON(Frame{Type: FrameRequest, Payload: p}, FrameRequest, &req)
		var resp Response
		_ = DecodeJSON(Frame{Type: FrameResponse, Payload: p}, FrameResponse, &resp)
		var h Hello
		_ = DecodeJSON(Frame{Type: FrameHello, Payload: p}, FrameHello, &h)
		var hr HelloReply
		_ = DecodeJSON(Frame{Type: FrameHelloReply, Payload: p}, FrameHelloReply, &hr)
		var es ExitStatus
		_ = DecodeJSON(Frame{Type: FrameExit, Payload: p}, FrameExit, &es)
	})
}

func TestZeroAndClosedClient(t *testing.T) {
	ctx := t.Context()
	var c Client
	if _, err := c.Health(ctx); !errors.Is(err, ErrNotConnected) {
		t.Errorf("zero client Health: %v, want ErrNotConnected", err)
	}
	if _, err := c.Exec(ctx, ExecSpec{Argv: []string{"true"}}, ExecIO{}); !errors.Is(err, ErrNotConnected) {
		t.Errorf("zero client Exec: %v, want ErrNotConnected", err)
	}
	var nilc *Client
	if _, err := nilc.Stat(ctx, "/"); !errors.Is(err, ErrNotConnected) {
		t.Errorf("nil client Stat: %v, want ErrNotConnected", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("zero client Close: %v", err)
	}
	if _, err := c.Health(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("closed client Health: %v, want ErrClosed", err)
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done of an unconnected client is not closed")
	}
}

// TestHandshakeBinaryToken guards against a token that is not UTF-8 being
// mangled on the way (a JSON string field turns such bytes into U+FFFD).
func TestHandshakeBinaryToken(t *testing.T) {
	tok := []byte{0xff, 0xfe, 0x00, 0x80, 'a', 0xc3, 0x28, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09}
	other := append([]byte{}, tok...)
	other[0] = 0xfd // differs only in a byte that is invalid UTF-8 either way
	for _, c := range []struct {
		sent []byte
		ok   bool
	}{{tok, true}, {other, false}} {
		a, b := net.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- ServerHandshake(context.Background(), b, func() []byte { return tok }) }()
		cerr := clientHandshake(context.Background(), a, c.sent)
		serr := <-errc
		a.Close()
		b.Close()
		if (cerr == nil) != c.ok || (serr == nil) != c.ok {
			t.Errorf("token %x: client %v, server %v; want ok=%v", c.sent, cerr, serr, c.ok)
		}
	}
}
