package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// seriesCache keeps the label pairs of the per-port series, which are most
// of a scrape (10 quarantined ports: 4,000 series, 3,200 of them drops by
// class and reason), so that a scrape does not build them again. Built
// with prometheus.MustNewConstMetric each time, they were 10 of the 15 MB a
// scrape of 10 ports allocated, and most of the daemon's garbage under
// a soak of floods: the collector ran in the middle of almost every
// scrape, and the heap's goal moved by the scrape's size. A series not
// sent by two scrapes in a row is forgotten, so the cache holds the ports
// of now.
//
// Collect holds mu from begin to end; a scrape's series may still be read
// (encoded) after that, so what the cache shares with them is never
// written again: the label pairs.
type seriesCache struct {
	mu  sync.Mutex
	gen uint64
	m   map[seriesKey]*seriesEntry
}

// seriesKey is a series: its description and up to 4 label values (the
// per-port series have 2 to 4).
type seriesKey struct {
	desc   *prometheus.Desc
	labels [4]string
	n      int
}

type seriesEntry struct {
	labels []*dto.LabelPair // sorted by name, as MustNewConstMetric makes them
	gen    uint64           // the last scrape that sent it
}

// begin starts a scrape: it takes the cache until end.
func (sc *seriesCache) begin() {
	sc.mu.Lock()
	sc.gen++
	if sc.m == nil {
		sc.m = map[seriesKey]*seriesEntry{}
	}
}

// end forgets the series the last two scrapes did not send, and gives the
// cache back.
func (sc *seriesCache) end() {
	for k, e := range sc.m {
		if e.gen+1 < sc.gen {
			delete(sc.m, k)
		}
	}
	sc.mu.Unlock()
}

// metric returns the series of desc with labels, valued v; between begin
// and end only. More than 4 labels are not cached.
func (sc *seriesCache) metric(desc *prometheus.Desc, typ prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	if len(labels) > len(seriesKey{}.labels) {
		return prometheus.MustNewConstMetric(desc, typ, v, labels...)
	}
	k := seriesKey{desc: desc, n: len(labels)}
	copy(k.labels[:], labels)
	e := sc.m[k]
	if e == nil {
		var m dto.Metric
		if err := prometheus.MustNewConstMetric(desc, typ, v, labels...).Write(&m); err != nil {
			panic(err) // a const metric's Write cannot fail
		}
		e = &seriesEntry{labels: m.Label}
		sc.m[k] = e
	}
	e.gen = sc.gen
	return &cachedMetric{desc: desc, labels: e.labels, typ: typ, v: v}
}

// cachedMetric is a constant metric whose label pairs are shared.
type cachedMetric struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	typ    prometheus.ValueType
	v      float64
}

func (m *cachedMetric) Desc() *prometheus.Desc { return m.desc }

func (m *cachedMetric) Write(out *dto.Metric) error {
	out.Label = m.labels
	switch m.typ {
	case prometheus.CounterValue:
		out.Counter = &dto.Counter{Value: &m.v}
	case prometheus.GaugeValue:
		out.Gauge = &dto.Gauge{Value: &m.v}
	default:
		out.Untyped = &dto.Untyped{Value: &m.v}
	}
	return nil
}
