package daemon

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the manager's Prometheus metrics. Counts are read from the
// manager's own tables when scraped; latencies are observed around the
// real operations.
type metrics struct {
	create      *prometheus.HistogramVec
	createVM    *prometheus.HistogramVec
	createFail  *prometheus.CounterVec
	execStart   prometheus.Histogram
	execTime    prometheus.Histogram
	destroy     prometheus.Histogram
	timeouts    *prometheus.CounterVec
	poolRefills *prometheus.CounterVec
}

// latencyBuckets span 250µs to ~16s.
var latencyBuckets = prometheus.ExponentialBuckets(0.00025, 2, 17)

func newMetrics(reg prometheus.Registerer, m *Manager) (*metrics, error) {
	mt := &metrics{
		create: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ironclaw_sandbox_create_seconds", Help: "Time to create a sandbox until its agent answers, by source (cold start or warm pool).",
			Buckets: latencyBuckets,
		}, []string{"source"}),
		createVM: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ironclaw_vm_create_seconds", Help: "Time to create a micro-VM sandbox until its agent answers, by source (cold boot or warm pool); also counted in ironclaw_sandbox_create_seconds.",
			Buckets: latencyBuckets,
		}, []string{"source"}),
		createFail: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ironclaw_sandbox_create_failures_total", Help: "Failed sandbox creates by the setup step that failed.",
		}, []string{"step"}),
		execStart: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ironclaw_exec_start_seconds", Help: "Time from an exec request to the process running in the sandbox.",
			Buckets: latencyBuckets,
		}),
		execTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ironclaw_exec_seconds", Help: "Time from an exec request until its exit status was delivered.",
			Buckets: latencyBuckets,
		}),
		destroy: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ironclaw_sandbox_destroy_seconds", Help: "Time to destroy a sandbox and remove every kernel object it had.",
			Buckets: latencyBuckets,
		}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ironclaw_sandbox_timeouts_total", Help: "Sandboxes destroyed by their time-to-live or idle timeout.",
		}, []string{"reason"}),
		poolRefills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ironclaw_pool_refills_total", Help: "Warm pool members started, by class and result.",
		}, []string{"class", "result"}),
	}
	states := prometheus.NewDesc("ironclaw_sandboxes", "Sandboxes by state (pool members are state pooled).", []string{"state"}, nil)
	poolSize := prometheus.NewDesc("ironclaw_pool_size", "Ready members of each warm pool.", []string{"class"}, nil)
	poolTarget := prometheus.NewDesc("ironclaw_pool_target", "Configured size of each warm pool.", []string{"class"}, nil)
	collectors := []prometheus.Collector{mt.create, mt.createVM, mt.createFail, mt.execStart, mt.execTime, mt.destroy, mt.timeouts, mt.poolRefills,
		&funcCollector{descs: []*prometheus.Desc{states, poolSize, poolTarget}, collect: func(ch chan<- prometheus.Metric) {
			counts, pools := m.counts()
			for _, s := range []string{StateCreating, StateRunning, StateExited, StateDestroying, statePooled} {
				ch <- prometheus.MustNewConstMetric(states, prometheus.GaugeValue, float64(counts[s]), s)
			}
			for _, p := range pools {
				ch <- prometheus.MustNewConstMetric(poolSize, prometheus.GaugeValue, float64(p.ready), p.name)
				ch <- prometheus.MustNewConstMetric(poolTarget, prometheus.GaugeValue, float64(p.target), p.name)
			}
		}},
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return mt, nil
}

// observeCreate records a create of backend from source that began at t0.
func (m *Manager) observeCreate(backend, source string, t0 time.Time) {
	d := time.Since(t0).Seconds()
	m.met.create.WithLabelValues(source).Observe(d)
	if backend == BackendVM {
		m.met.createVM.WithLabelValues(source).Observe(d)
	}
}

// funcCollector collects const metrics computed at scrape time.
type funcCollector struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (f *funcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range f.descs {
		ch <- d
	}
}

func (f *funcCollector) Collect(ch chan<- prometheus.Metric) { f.collect(ch) }
