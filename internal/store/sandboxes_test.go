package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestSandboxRecordsAndPoolBinding(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	now := time.Now().Truncate(time.Microsecond)
	pool := &SandboxRow{ID: "pool-1", BackendID: "pool-1", Backend: "jail", State: StatePooled, Token: []byte("0123456789abcdef"),
		PoolClass: "c1", Created: now}
	if err := s.InsertSandbox(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertSandbox(ctx, pool); !errors.Is(err, ErrConflict) {
		t.Fatalf("second insert of the same ID: %v, want ErrConflict", err)
	}
	cold := &SandboxRow{ID: "web", BackendID: "web", Backend: "jail", State: StateCreating, Token: []byte("x"), Created: now.Add(time.Second),
		Spec: json.RawMessage(`{"a":1}`), Labels: map[string]string{"team": "a"}, TTL: time.Minute}
	if err := s.InsertSandbox(ctx, cold); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSandboxState(ctx, "web", StateRunning, now.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSandboxState(ctx, "nope", StateRunning, time.Time{}); !errors.Is(err, ErrNoRow) {
		t.Fatalf("set state of a missing row: %v", err)
	}
	// Binding to a taken user ID fails and leaves the member free.
	if err := s.BindSandbox(ctx, "pool-1", &SandboxRow{ID: "web", State: StateRunning}); !errors.Is(err, ErrConflict) {
		t.Fatalf("bind to a taken ID: %v", err)
	}
	bound := &SandboxRow{ID: "agent-7", State: StateRunning, Labels: map[string]string{"k": "v"}, Idle: time.Second, Claimed: now}
	if err := s.BindSandbox(ctx, "pool-1", bound); err != nil {
		t.Fatal(err)
	}
	// A member is bound once.
	if err := s.BindSandbox(ctx, "pool-1", &SandboxRow{ID: "other", State: StateRunning}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second bind: %v", err)
	}
	got, err := s.Sandbox(ctx, "agent-7")
	if err != nil {
		t.Fatal(err)
	}
	if got.BackendID != "pool-1" || got.State != StateRunning || got.Labels["k"] != "v" || got.Idle != time.Second ||
		string(got.Token) != "0123456789abcdef" || got.PoolClass != "c1" || !got.Created.Equal(now) {
		t.Errorf("bound record: %+v", got)
	}
	all, err := s.Sandboxes(ctx)
	if err != nil || len(all) != 2 || all[0].ID != "agent-7" || all[1].ID != "web" || all[1].TTL != time.Minute ||
		string(all[1].Spec) != `{"a":1}` || all[1].Started.IsZero() {
		t.Fatalf("records: %+v %v", all, err)
	}
	if err := s.DeleteSandbox(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sandbox(ctx, "web"); !errors.Is(err, ErrNoRow) {
		t.Fatalf("deleted record: %v", err)
	}
}

func TestEventsAppendQueryTrim(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	if n, err := s.LastEventSeq(ctx); err != nil || n != 0 {
		t.Fatalf("empty log: %d %v", n, err)
	}
	var evs []EventRow
	for i := 1; i <= 10; i++ {
		evs = append(evs, EventRow{Seq: int64(i), Time: time.Now(), Sandbox: fmt.Sprintf("sb%d", i%2), Type: "exec",
			Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
	}
	if err := s.AppendEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	got, err := s.Events(ctx, "sb1", 0, 2)
	if err != nil || len(got) != 2 || got[0].Seq != 7 || got[1].Seq != 9 || string(got[1].Data) != `{"n":9}` {
		t.Fatalf("newest 2 of sb1: %+v %v", got, err)
	}
	got, _ = s.Events(ctx, "", 8, 0)
	if len(got) != 2 || got[0].Seq != 9 {
		t.Fatalf("after 8: %+v", got)
	}
	if n, err := s.TrimEvents(ctx, 3); err != nil || n != 7 {
		t.Fatalf("trim: %d %v", n, err)
	}
	if last, _ := s.LastEventSeq(ctx); last != 10 {
		t.Fatalf("last seq after trim: %d", last)
	}
}

// TestConcurrentCreatesOneHandle runs the create path's statements from
// many goroutines at once, with readers beside them, as a daemon's
// concurrent creates do: one writer connection, no error, nothing lost.
func TestConcurrentCreatesOneHandle(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				id := fmt.Sprintf("s-%d-%d", g, i)
				r := &SandboxRow{ID: id, BackendID: id, Backend: "jail", State: StateCreating, Token: []byte("t"), Created: time.Now()}
				if err := s.InsertSandbox(ctx, r); err != nil {
					errs <- err
					return
				}
				if err := s.SetSandboxState(ctx, id, StateRunning, time.Now()); err != nil {
					errs <- err
					return
				}
				if i%2 == 1 {
					if err := s.DeleteSandbox(ctx, id); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := s.Sandboxes(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	rows, err := s.Sandboxes(ctx)
	if err != nil || len(rows) != 16*5 {
		t.Fatalf("%d rows, %v; want %d", len(rows), err, 16*5)
	}
	for _, r := range rows {
		if r.State != StateRunning {
			t.Errorf("%s is %s", r.ID, r.State)
		}
	}
}

// TestDeleteSandboxRecordSparesAReCreatedID: a record read before its
// sandbox was dropped and its ID re-created deletes nothing of the new one.
func TestDeleteSandboxRecordSparesAReCreatedID(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	now := time.Now().Truncate(time.Microsecond)
	old := &SandboxRow{ID: "foo", BackendID: "foo", Backend: "jail", State: StateRunning, Token: []byte("t"), Created: now}
	if err := s.InsertSandbox(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSandbox(ctx, "foo"); err != nil {
		t.Fatal(err)
	}
	renewed := &SandboxRow{ID: "foo", BackendID: "foo", Backend: "jail", State: StateRunning, Token: []byte("t"), Created: now.Add(time.Second)}
	if err := s.InsertSandbox(ctx, renewed); err != nil {
		t.Fatal(err)
	}
	if deleted, err := s.DeleteSandboxRecord(ctx, old); err != nil || deleted {
		t.Fatalf("DeleteSandboxRecord(stale row) = %v, %v; want nothing deleted", deleted, err)
	}
	if _, err := s.Sandbox(ctx, "foo"); err != nil {
		t.Fatalf("the re-created record is gone: %v", err)
	}
	if deleted, err := s.DeleteSandboxRecord(ctx, renewed); err != nil || !deleted {
		t.Fatalf("DeleteSandboxRecord(current row) = %v, %v; want deleted", deleted, err)
	}
	if _, err := s.Sandbox(ctx, "foo"); !errors.Is(err, ErrNoRow) {
		t.Fatalf("after deleting the current record: %v, want ErrNoRow", err)
	}
}
