package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/bench"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/jail/spawner"
)

// daemonBench measures the daemon (ironclaw serve):
//
//	latency   create → first exec → destroy, cold and from the warm pool,
//	          against `ironclaw run -- true` (embedded and through the daemon)
//	exec      exec round trip in a ready sandbox against fork/exec of /bin/true
//	rate      sandboxes created per second, sustained, with and without
//	          cgroup limits, against embedded `ironclaw run -- true`
//	memory    host memory per idle sandbox (MemAvailable delta and init Pss)
//	          against an idle `sleep` process
//	many      N idle sandboxes alive at once (default 1000)
func daemonBench(args []string) error {
	fs := flag.NewFlagSet("daemon", flag.ExitOnError)
	var c common
	c.register(fs)
	which := fs.String("only", "latency,exec,rate,memory,many", "comma-separated parts to run")
	pool := fs.Int("pool", 4, "warm pool size")
	rateN := fs.Int("rate-n", 200, "sandboxes per rate round")
	rateConc := fs.Int("rate-concurrency", 16, "concurrent creates in a rate round")
	rateRounds := fs.Int("rate-rounds", 3, "rate rounds per contestant (median reported)")
	memN := fs.Int("memory-n", 100, "idle sandboxes for the memory measurement")
	manyN := fs.Int("many", 1000, "idle sandboxes alive at once")
	baseline := fs.String("baseline", "", "an other ironclaw binary (such as a build of main) whose daemon the rate part measures too, in the same rounds, on a root of its own")
	fs.Parse(args)
	cleanup, err := c.setup()
	if err != nil {
		return err
	}
	defer cleanup()
	parts := map[string]bool{}
	for _, p := range strings.Split(*which, ",") {
		parts[strings.TrimSpace(p)] = true
	}
	d, err := startServe(c.ironclaw, c.root, "--pool", strconv.Itoa(*pool), "--max-creates", strconv.Itoa(max(*rateConc, 8)))
	if err != nil {
		return err
	}
	defer d.stop()
	ctx := context.Background()
	if err := d.waitPool(ctx, "default", *pool); err != nil {
		return err
	}
	if parts["latency"] {
		if err := latencyBench(ctx, &c, d); err != nil {
			return err
		}
	}
	if parts["exec"] {
		if err := execBench(ctx, &c, d); err != nil {
			return err
		}
	}
	if parts["rate"] {
		var base *serveProc
		if *baseline != "" {
			// Its own root, beside the measured one (same file system).
			if base, err = startServe(*baseline, c.root+"-baseline", "--pool", "0", "--max-creates", strconv.Itoa(max(*rateConc, 8))); err != nil {
				return fmt.Errorf("-baseline: %w", err)
			}
			defer base.stop()
		}
		if err := rateBench(ctx, &c, d, base, *rateN, *rateConc, *rateRounds); err != nil {
			return err
		}
	}
	if parts["memory"] {
		if err := memoryBench(ctx, d, *memN); err != nil {
			return err
		}
	}
	if parts["many"] {
		if err := manyBench(ctx, d, *manyN); err != nil {
			return err
		}
	}
	return nil
}

type serveProc struct {
	cmd    *exec.Cmd
	c      *client.Client
	root   string
	socket string
	done   chan struct{}
}

func startServe(bin, root string, args ...string) (*serveProc, error) {
	d := &serveProc{root: root, socket: filepath.Join(root, "ironclaw.sock"), done: make(chan struct{})}
	d.cmd = exec.Command(bin, append([]string{"--root", root, "serve"}, args...)...)
	logf, err := os.CreateTemp("", "ironclaw-bench-serve-*.log")
	if err != nil {
		return nil, err
	}
	d.cmd.Stderr = logf
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.cmd.Wait(); close(d.done); logf.Close() }()
	for deadline := time.Now().Add(30 * time.Second); !client.Reachable(context.Background(), d.socket, time.Second); time.Sleep(20 * time.Millisecond) {
		select {
		case <-d.done:
			return nil, fmt.Errorf("ironclaw serve exited; log in %s", logf.Name())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("ironclaw serve did not answer; log in %s", logf.Name())
		}
	}
	if d.c, err = client.New(client.Config{Socket: d.socket}); err != nil {
		return nil, err
	}
	return d, nil
}

// stop destroys every sandbox and stops the daemon.
func (d *serveProc) stop() {
	ctx := context.Background()
	if l, err := d.c.List(ctx, nil); err == nil {
		d.destroyAll(ctx, ids(l), 16)
	}
	d.c.Close()
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	// Pool members outlive the daemon by design; a daemon without pools
	// destroys them at start.
	if dd, err := startServe(d.cmd.Path, d.root); err == nil {
		dd.c.Close()
		dd.cmd.Process.Signal(syscall.SIGTERM)
		<-dd.done
	}
}

func ids(l []api.Sandbox) []string {
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = s.ID
	}
	return out
}

func (d *serveProc) destroyAll(ctx context.Context, ids []string, conc int) error {
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := d.c.Destroy(ctx, id); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (d *serveProc) metric(prefix string) float64 {
	resp, err := (&http2{d.socket}).get("/metrics")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(resp, "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			return v
		}
	}
	return 0
}

func (d *serveProc) waitPool(ctx context.Context, class string, n int) error {
	if n == 0 {
		return nil
	}
	q := fmt.Sprintf("ironclaw_pool_size{class=%q}", class)
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if int(d.metric(q)) >= n {
			return nil
		}
	}
	return fmt.Errorf("the warm pool %s did not fill to %d", class, n)
}

func latencyBench(ctx context.Context, c *common, d *serveProc) error {
	no := false
	cycle := func(pool bool) func(context.Context) error {
		return func(ctx context.Context) error {
			req := api.CreateRequest{}
			if !pool {
				req.Pool = &no
			} else if err := d.waitPool(ctx, "default", 1); err != nil {
				return err
			}
			sb, err := d.c.Create(ctx, req)
			if err != nil {
				return err
			}
			if pool && !sb.FromPool {
				return fmt.Errorf("create did not take a pool member")
			}
			res, err := d.c.ExecBuffered(ctx, sb.ID, api.ExecRequest{Argv: []string{"true"}})
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("true exited %d", res.ExitCode)
			}
			if derr := d.c.Destroy(ctx, sb.ID); err == nil {
				err = derr
			}
			return err
		}
	}
	ic := []string{c.ironclaw, "--root", d.root, "run"}
	rep, err := bench.Run(ctx, "create → first exec (true) → destroy through the daemon API (wall time per cycle)",
		"ironclaw run --no-daemon -- true", c.runs, c.warmup, []bench.Contestant{
			{Name: "daemon, cold start", Run: cycle(false)},
			{Name: "daemon, warm pool", Run: cycle(true)},
			command("ironclaw run -- true (through the daemon)", append(ic, "--", "true")...),
			command("ironclaw run --no-daemon -- true", append(ic, "--no-daemon", "--", "true")...),
		})
	if err != nil {
		return err
	}
	return c.print(rep)
}

func execBench(ctx context.Context, c *common, d *serveProc) error {
	no := false
	sb, err := d.c.Create(ctx, api.CreateRequest{ID: "bench-exec", Pool: &no})
	if err != nil {
		return err
	}
	defer d.c.Destroy(ctx, sb.ID)
	rep, err := bench.Run(ctx, "exec round trip in a ready sandbox (request → exit status)", "fork/exec /bin/true", c.runs*5, c.warmup, []bench.Contestant{
		{Name: "daemon exec true (buffered, HTTP)", Run: func(ctx context.Context) error {
			res, err := d.c.ExecBuffered(ctx, sb.ID, api.ExecRequest{Argv: []string{"true"}})
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("exit %d", res.ExitCode)
			}
			return err
		}},
		{Name: "daemon exec true (stream, upgrade)", Run: func(ctx context.Context) error {
			e, err := d.c.Exec(ctx, sb.ID, api.ExecRequest{Argv: []string{"true"}}, client.ExecIO{})
			if err != nil {
				return err
			}
			st, err := e.Wait()
			if err == nil && st.ExitCode != 0 {
				err = fmt.Errorf("exit %d", st.ExitCode)
			}
			return err
		}},
		{Name: "fork/exec /bin/true", Run: func(ctx context.Context) error { return exec.CommandContext(ctx, "/bin/true").Run() }},
	})
	if err != nil {
		return err
	}
	return c.print(rep)
}

// rateBench creates n sandboxes with conc creates in flight and reports
// sandboxes per second (creates only; the destroys follow, timed apart).
// With base, the daemon of the baseline binary runs the same creates in
// the same rounds.
func rateBench(ctx context.Context, c *common, d, base *serveProc, n, conc, rounds int) error {
	no, zero := false, int64(0)
	type contestant struct {
		name string
		d    *serveProc // whose sandboxes these are
		one  func(ctx context.Context, i int) (string, error)
	}
	var seq atomic.Int64
	create := func(d *serveProc, req api.CreateRequest) func(context.Context, int) (string, error) {
		return func(ctx context.Context, i int) (string, error) {
			r := req
			r.ID = fmt.Sprintf("rate-%d", seq.Add(1))
			sb, err := d.c.Create(ctx, r)
			if err != nil {
				return "", err
			}
			return sb.ID, nil
		}
	}
	cgroupReq := api.CreateRequest{Pool: &no}
	noCgroupReq := api.CreateRequest{Pool: &no, Resources: &api.Resources{MemoryBytes: &zero, Pids: &zero}}
	cs := []contestant{
		{"daemon create, default limits (cgroup)", d, create(d, cgroupReq)},
		{"daemon create, --memory 0 --pids 0 (no cgroup)", d, create(d, noCgroupReq)},
	}
	if base != nil {
		cs = append(cs,
			contestant{"baseline daemon create, default limits", base, create(base, cgroupReq)},
			contestant{"baseline daemon create, no cgroup", base, create(base, noCgroupReq)})
	}
	cs = append(cs,
		contestant{"ironclaw run --no-daemon -- true (same concurrency)", d, func(ctx context.Context, i int) (string, error) {
			out, err := exec.CommandContext(ctx, c.ironclaw, "--root", d.root, "run", "--no-daemon", "--", "true").CombinedOutput()
			if err != nil {
				return "", fmt.Errorf("%v: %s", err, out)
			}
			return "", nil
		}})
	rates := make([][]float64, len(cs))
	destroyRates := make([][]float64, len(cs))
	// The daemon's own CPU time and minor faults per sandbox, its
	// spawner's included (create and destroy): far steadier than the rate
	// on a machine shared with other work. Not for the embedded peer,
	// whose processes are its own.
	cpuPer := make([][]float64, len(cs))
	faultsPer := make([][]float64, len(cs))
	for r := 0; r < rounds; r++ {
		for ci, ct := range cs {
			embedded := ci == len(cs)-1
			before, statErr := bench.ProcStatWith(ct.d.cmd.Process.Pid, spawner.Arg0)
			var made []string
			var mu sync.Mutex
			sem := make(chan struct{}, conc)
			var wg sync.WaitGroup
			var firstErr error
			t0 := time.Now()
			for i := 0; i < n; i++ {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					id, err := ct.one(ctx, i)
					mu.Lock()
					defer mu.Unlock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if id != "" {
						made = append(made, id)
					}
				}()
			}
			wg.Wait()
			el := time.Since(t0)
			if firstErr != nil {
				ct.d.destroyAll(ctx, made, conc)
				return fmt.Errorf("%s: %w", ct.name, firstErr)
			}
			rates[ci] = append(rates[ci], float64(n)/el.Seconds())
			if len(made) > 0 {
				t1 := time.Now()
				if err := ct.d.destroyAll(ctx, made, conc); err != nil {
					return err
				}
				destroyRates[ci] = append(destroyRates[ci], float64(len(made))/time.Since(t1).Seconds())
			}
			if after, err := bench.ProcStatWith(ct.d.cmd.Process.Pid, spawner.Arg0); !embedded && statErr == nil && err == nil {
				cpuPer[ci] = append(cpuPer[ci], (after.CPU-before.CPU).Seconds()*1000/float64(n))
				faultsPer[ci] = append(faultsPer[ci], float64(after.MinFlt-before.MinFlt)/float64(n))
			}
		}
	}
	med := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		return s[len(s)/2]
	}
	peer := med(rates[len(cs)-1])
	fmt.Printf("sustained sandbox creation, %d per round, %d in flight, median of %d rounds (peer: %s)\n", n, conc, rounds, cs[len(cs)-1].name)
	fmt.Printf("%52s  %10s  %8s  %12s  %17s  %18s\n", "contestant", "created/s", "vs peer", "destroyed/s", "daemon CPU/sandbox", "daemon faults/sb")
	fmt.Println("  (daemon: the daemon process and its spawner)")
	for i, ct := range cs {
		ds, cpu, flt := "-", "-", "-"
		if len(destroyRates[i]) > 0 {
			ds = fmt.Sprintf("%.1f", med(destroyRates[i]))
		}
		if len(cpuPer[i]) > 0 {
			cpu = fmt.Sprintf("%.2f ms", med(cpuPer[i]))
			flt = fmt.Sprintf("%.0f", med(faultsPer[i]))
		}
		fmt.Printf("%52s  %10.1f  %7.2fx  %12s  %17s  %18s\n", ct.name, med(rates[i]), med(rates[i])/peer, ds, cpu, flt)
	}
	return nil
}

// memAvailable reads MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no MemAvailable in /proc/meminfo")
}

// smaps reads a field (Pss, Rss, Private_Dirty...) of /proc/PID/smaps_rollup, in bytes.
func smaps(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in smaps_rollup of %d", field, pid)
}

func settle() {
	exec.Command("sync").Run()
	time.Sleep(500 * time.Millisecond)
}

func medianInt(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]int64(nil), v...)
	sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
	return s[len(s)/2]
}

func mib(b int64) string { return fmt.Sprintf("%.2f MiB", float64(b)/(1<<20)) }

// createIdle creates n idle sandboxes (no pool) with conc in flight.
func createIdle(ctx context.Context, d *serveProc, prefix string, n, conc int) ([]string, time.Duration, error) {
	no := false
	var mu sync.Mutex
	var made []string
	var firstErr error
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sb, err := d.c.Create(ctx, api.CreateRequest{ID: fmt.Sprintf("%s-%04d", prefix, i), Pool: &no})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			made = append(made, sb.ID)
		}()
	}
	wg.Wait()
	return made, time.Since(t0), firstErr
}

// memoryBench measures host memory per idle sandbox two ways: the drop in
// MemAvailable per sandbox (everything: init, kernel objects, the daemon's
// share), and the proportional set size of each sandbox's init.
func memoryBench(ctx context.Context, d *serveProc, n int) error {
	daemonPid := d.cmd.Process.Pid
	settle()
	before, err := memAvailable()
	if err != nil {
		return err
	}
	dBefore, _ := smaps(daemonPid, "Pss")
	made, _, err := createIdle(ctx, d, "mem", n, 8)
	if err != nil {
		d.destroyAll(ctx, made, 16)
		return err
	}
	settle()
	after, _ := memAvailable()
	dAfter, _ := smaps(daemonPid, "Pss")
	var pss, priv []int64
	for _, id := range made {
		sb, err := d.c.Get(ctx, id)
		if err != nil {
			continue
		}
		if p, err := smaps(sb.InitPID, "Pss"); err == nil {
			pss = append(pss, p)
		}
		pd, err1 := smaps(sb.InitPID, "Private_Dirty")
		pc, err2 := smaps(sb.InitPID, "Private_Clean")
		if err1 == nil && err2 == nil {
			priv = append(priv, pd+pc)
		}
	}
	// Peer: an idle process that does nothing (sleep), measured alike.
	var peerPss []int64
	var sleepers []*exec.Cmd
	for i := 0; i < 20; i++ {
		s := exec.Command("sleep", "600")
		if err := s.Start(); err == nil {
			sleepers = append(sleepers, s)
		}
	}
	time.Sleep(200 * time.Millisecond)
	for _, s := range sleepers {
		if p, err := smaps(s.Process.Pid, "Pss"); err == nil {
			peerPss = append(peerPss, p)
		}
		s.Process.Kill()
		s.Wait()
	}
	perSandbox := (before - after) / int64(len(made))
	peer := medianInt(peerPss)
	fmt.Printf("host memory per idle sandbox, %d sandboxes (peer: an idle sleep process)\n", len(made))
	fmt.Printf("  MemAvailable drop / sandbox:        %s\n", mib(perSandbox))
	fmt.Printf("  init Pss, median:                   %s  (%.2fx an idle sleep's %s)\n", mib(medianInt(pss)), float64(medianInt(pss))/float64(peer), mib(peer))
	fmt.Printf("  init private (clean+dirty), median: %s\n", mib(medianInt(priv)))
	fmt.Printf("  daemon Pss growth / sandbox:        %s\n", mib((dAfter-dBefore)/int64(len(made))))
	return d.destroyAll(ctx, made, 16)
}

// manyBench keeps n idle sandboxes alive at once, execs in a sample of
// them, and destroys them all.
func manyBench(ctx context.Context, d *serveProc, n int) error {
	settle()
	before, _ := memAvailable()
	made, took, err := createIdle(ctx, d, "many", n, 16)
	fmt.Printf("%d idle sandboxes at once: created %d in %s (%.1f/s)", n, len(made), took.Round(time.Millisecond), float64(len(made))/took.Seconds())
	if err != nil {
		fmt.Printf(", first failure: %v\n", err)
	} else {
		fmt.Println()
	}
	settle()
	after, _ := memAvailable()
	if len(made) > 0 {
		fmt.Printf("  MemAvailable drop: %s total, %s per sandbox\n", mib(before-after), mib((before-after)/int64(len(made))))
	}
	var lat []time.Duration
	for i := 0; i < len(made); i += max(1, len(made)/50) {
		t0 := time.Now()
		res, err := d.c.ExecBuffered(ctx, made[i], api.ExecRequest{Argv: []string{"true"}})
		if err != nil || res.ExitCode != 0 {
			fmt.Printf("  exec in %s failed: %v\n", made[i], err)
			continue
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	fmt.Printf("  exec true in %d of them while all are alive: median %s, p90 %s\n", len(lat), bench.Percentile(lat, 50), bench.Percentile(lat, 90))
	t0 := time.Now()
	derr := d.destroyAll(ctx, made, 16)
	fmt.Printf("  destroyed all in %s (%.1f/s)\n", time.Since(t0).Round(time.Millisecond), float64(len(made))/time.Since(t0).Seconds())
	return errors.Join(err, derr)
}

// http2 fetches plain-text endpoints (metrics) over the daemon's socket.
type http2 struct{ socket string }

func (h *http2) get(path string) (string, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", h.socket)
	}}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://ironclaw" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
