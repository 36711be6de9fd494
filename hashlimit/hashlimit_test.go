package hashlimit

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/shaperd/shaperd/bucket"
)

func mustNew(t testing.TB, c Config) *Table {
	t.Helper()
	tb, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

var (
	a4 = netip.MustParseAddr("198.18.0.1")
	b4 = netip.MustParseAddr("198.18.0.2")
)

// addrN returns a distinct IPv4 address for each n.
func addrN(n int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
}

// send offers count frames of size bytes from addr, evenly over d from
// start, and returns how many were admitted.
func send(tb *Table, addr netip.Addr, start int64, d time.Duration, count, size int) int {
	ok := 0
	for i := range count {
		now := start + int64(d)*int64(i)/int64(count)
		if tb.Admit(addr, now, size) {
			ok++
		}
	}
	return ok
}

func TestPerKeyRate(t *testing.T) {
	tb := mustNew(t, Config{Limits: bucket.Limits{PPS: 5, BurstPackets: 10}})
	// 10 s of 1000 pps from one source: the burst, then 5 per second.
	if got := send(tb, a4, 0, 10*time.Second, 10000, 60); got < 59 || got > 61 {
		t.Fatalf("one source at 1000 pps for 10 s: %d admitted, want 10 + 50", got)
	}
	// Another source is untouched by the first one's debt.
	if got := send(tb, b4, int64(10*time.Second), time.Second, 10, 60); got != 10 {
		t.Fatalf("second source: %d of its burst of 10 admitted", got)
	}
	// The first source, idle for 2 s, has its burst back.
	if got := send(tb, a4, int64(12*time.Second), time.Millisecond, 20, 60); got != 10 {
		t.Fatalf("first source after 2 s idle: %d admitted, want its burst of 10", got)
	}
}

func TestByteRate(t *testing.T) {
	tb := mustNew(t, Config{Limits: bucket.Limits{BytesPerSec: 10000, BurstBytes: 3000}})
	// 1000-byte frames at 100 per second for 5 s: 3 of burst plus 10 per second.
	if got := send(tb, a4, 0, 5*time.Second, 500, 1000); got < 52 || got > 54 {
		t.Fatalf("%d admitted, want about 53", got)
	}
	// A frame larger than the depth never fits.
	if tb.Admit(b4, int64(time.Hour), 3001) {
		t.Fatal("a frame larger than the byte depth was admitted")
	}
}

func TestBlock(t *testing.T) {
	tb := mustNew(t, Config{Limits: bucket.Limits{Block: true}})
	if tb.Admit(a4, 0, 60) {
		t.Fatal("blocked table admitted a frame")
	}
}

func TestUnlimitedAdmits(t *testing.T) {
	tb := mustNew(t, Config{})
	if got := send(tb, a4, 0, time.Millisecond, 1000, 1500); got != 1000 {
		t.Fatalf("no limits: %d of 1000 admitted", got)
	}
}

func TestPrefixKeys(t *testing.T) {
	tb := mustNew(t, Config{Limits: bucket.Limits{PPS: 1, BurstPackets: 1}})
	x := netip.MustParseAddr("2001:db8:1:2::1")
	y := netip.MustParseAddr("2001:db8:1:2:ffff::9") // same /64
	z := netip.MustParseAddr("2001:db8:1:3::1")      // another /64
	if !tb.Admit(x, 0, 60) || tb.Admit(y, 0, 60) {
		t.Fatal("two addresses of one /64 do not share a bucket")
	}
	if !tb.Admit(z, 0, 60) {
		t.Fatal("another /64 shares the bucket")
	}
	if !tb.Admit(a4, 0, 60) || !tb.Admit(b4, 0, 60) {
		t.Fatal("two IPv4 hosts share a bucket at /32")
	}
	// IPv4 and its IPv4-mapped IPv6 form are different keys.
	tb4 := mustNew(t, Config{Limits: bucket.Limits{PPS: 1, BurstPackets: 1}, BitsV4: 24, BitsV6: 128})
	if !tb4.Admit(a4, 0, 60) || tb4.Admit(netip.MustParseAddr("198.18.0.200"), 0, 60) {
		t.Fatal("BitsV4 24: two hosts of a /24 do not share")
	}
	if !tb4.Admit(netip.AddrFrom16(a4.As16()), 0, 60) {
		t.Fatal("IPv4-mapped IPv6 shares the IPv4 key")
	}
	if !tb4.Admit(x, 0, 60) || !tb4.Admit(y, 0, 60) {
		t.Fatal("BitsV6 128: two hosts share")
	}
	// Frames without an address share one key.
	if !tb4.Admit(netip.Addr{}, 0, 60) || tb4.Admit(netip.Addr{}, 0, 60) {
		t.Fatal("frames without an address do not share a key")
	}
}

func TestBoundedAndFair(t *testing.T) {
	tb := mustNew(t, Config{Limits: bucket.Limits{PPS: 10, BurstPackets: 5}, Size: 64})
	var now int64
	heavy := a4
	// The heavy source spends its burst and is being refused.
	send(tb, heavy, now, time.Millisecond, 100, 60)
	// A spray of 100000 new sources, each one frame, interleaved with
	// the heavy source at 1000 pps.
	heavyOK := 0
	for i := range 100000 {
		now += int64(10 * time.Microsecond)
		tb.Admit(addrN(i), now, 60)
		if i%100 == 0 && tb.Admit(heavy, now, 60) {
			heavyOK++
		}
	}
	if tb.Len() > tb.Cap() || tb.Cap() != 64 {
		t.Fatalf("Len %d Cap %d", tb.Len(), tb.Cap())
	}
	// 1 s elapsed: at 10 pps the heavy source may send about 10 more,
	// not a fresh burst each time the spray evicts it.
	if heavyOK > 12 {
		t.Fatalf("the heavy source passed %d frames in 1 s at 10 pps: the spray evicted its entry", heavyOK)
	}
	if tb.Evictions() == 0 {
		t.Fatal("no evictions counted under a spray of new keys")
	}
}

func TestRefilledEntriesAreReusedNotEvicted(t *testing.T) {
	tb := mustNew(t, Config{Limits: bucket.Limits{PPS: 1000, BurstPackets: 1}, Size: 8})
	var now int64
	for i := range 1000 {
		tb.Admit(addrN(i), now, 60)
		now += int64(10 * time.Millisecond) // each entry refills before the next key
	}
	if tb.Evictions() != 0 {
		t.Fatalf("%d evictions of entries that had refilled", tb.Evictions())
	}
}

func TestEvictsTheLeastLimited(t *testing.T) {
	tb := mustNew(t, Config{Limits: bucket.Limits{PPS: 1, BurstPackets: 100}, Size: 8})
	// Fill all 8 slots (the whole table is one window) with different
	// debts: key i sends i+1 frames.
	for i := range 8 {
		for range i + 1 {
			tb.Admit(addrN(i), 0, 60)
		}
	}
	tb.Admit(addrN(100), 0, 60) // evicts key 0, the least in debt
	if tb.Evictions() != 1 {
		t.Fatalf("evictions %d", tb.Evictions())
	}
	for i := 1; i < 8; i++ {
		r := tb.Lookup(addrN(i), 0)
		if e := tb.slots[r]; e.tatP != int64(i+1)*int64(time.Second) {
			t.Fatalf("key %d lost its debt: tat %d", i, e.tatP)
		}
	}
	if tb.Evictions() != 1 {
		t.Fatal("keys 1-7 were not all in the table")
	}
}

func TestSetLimitsCapsDebt(t *testing.T) {
	// 1 per minute, burst 3: the fourth connection waits a minute.
	tb := mustNew(t, Config{Limits: bucket.Limits{PPS: 1.0 / 60, BurstPackets: 3}})
	if got := send(tb, a4, 0, time.Millisecond, 10, 60); got != 3 {
		t.Fatalf("%d admitted, want 3", got)
	}
	if err := tb.SetLimits(bucket.Limits{PPS: 100, BurstPackets: 2}, int64(time.Second)); err != nil {
		t.Fatal(err)
	}
	// The bucket is empty (debt capped at the new depth of 20 ms), not a
	// minute in debt: a second at 1000 pps passes about 100.
	if got := send(tb, a4, int64(time.Second), time.Second, 1000, 60); got < 99 || got > 101 {
		t.Fatalf("after raising the rate, %d admitted in 1 s, want about 100: the old debt was not capped", got)
	}
	if err := tb.SetLimits(bucket.Limits{BurstBytes: 10}, 0); !errors.Is(err, bucket.ErrInvalidLimits) {
		t.Fatalf("SetLimits with a bad burst: %v", err)
	}
	if tb.Limits().PPS != 100 {
		t.Fatal("a rejected SetLimits changed the limits")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want error
	}{
		{Config{Size: -1}, ErrInvalidConfig},
		{Config{Size: MaxSize + 1}, ErrInvalidConfig},
		{Config{BitsV4: 33}, ErrInvalidConfig},
		{Config{BitsV6: 129}, ErrInvalidConfig},
		{Config{BitsV6: -1}, ErrInvalidConfig},
		{Config{Limits: bucket.Limits{PPS: -1}}, bucket.ErrInvalidLimits},
		{Config{Size: 1, BitsV4: 8, BitsV6: 48, Limits: bucket.Limits{PPS: 1}}, nil},
	} {
		_, err := New(c.cfg)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%+v: %v, want %v", c.cfg, err, c.want)
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	tb := mustNew(t, Config{Limits: bucket.Limits{PPS: 10, BytesPerSec: 1e6}, Size: 16})
	v6 := netip.MustParseAddr("2001:db8::1")
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		i++
		tb.Admit(addrN(i), int64(i), 100)
		tb.Admit(v6, int64(i), 100)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per Admit", allocs)
	}
}

func BenchmarkAdmit(b *testing.B) {
	for _, c := range []struct {
		name string
		keys int
	}{{"one-key", 1}, {"spray", 1 << 20}} {
		b.Run(c.name, func(b *testing.B) {
			tb := mustNew(b, Config{Limits: bucket.Limits{PPS: 100}})
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				tb.Admit(addrN(i%c.keys), int64(i)*1000, 100)
			}
		})
	}
}
