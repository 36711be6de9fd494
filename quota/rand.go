package quota

// Rand is a xorshift64* generator for Admit's rnd argument. Each
// forwarding goroutine owns one: it is not safe for concurrent use, which
// is what keeps it free of locks and allocations. The zero value works (it
// is seeded with a fixed constant); NewRand seeds it.
type Rand struct{ s uint64 }

// NewRand returns a Rand seeded with seed (any value, 0 included).
func NewRand(seed uint64) Rand {
	// splitmix64 of the seed, so that nearby seeds give unrelated streams
	// and the state is never zero.
	z := seed + 0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	z ^= z >> 31
	if z == 0 {
		z = 0x9E3779B97F4A7C15
	}
	return Rand{s: z}
}

// Uint32 returns the next uniformly distributed 32-bit value.
func (r *Rand) Uint32() uint32 {
	if r.s == 0 {
		*r = NewRand(0)
	}
	r.s ^= r.s >> 12
	r.s ^= r.s << 25
	r.s ^= r.s >> 27
	return uint32((r.s * 0x2545F4914F6CDD1D) >> 32)
}
