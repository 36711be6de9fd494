package forward

import (
	"time"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
)

// BudgetFill is how full one budget's buckets are: a fraction from 0 (empty,
// frames are being refused) to 1 (full, a whole burst would pass). A
// dimension without a rate has no bucket: its Limited flag is false and its
// fill is 1.
type BudgetFill struct {
	Packets, Bytes               float64
	PacketsLimited, BytesLimited bool
}

// Limited reports whether the budget limits anything (has a rate in at
// least one dimension).
func (f BudgetFill) Limited() bool { return f.PacketsLimited || f.BytesLimited }

// DirFill is how full the budgets of one direction are. Classes[c] is the
// zero BudgetFill (not Limited) for a class without a budget of its own;
// Classes[classify.Bypass] and Classes[classify.Control] are the bypass and
// control budgets.
type DirFill struct {
	Aggregate BudgetFill
	Classes   [classify.NumClasses]BudgetFill
}

// Fill returns how full the direction's budgets are at now, for metrics.
// It reads the budgets the owner is using, under mu, so it briefly holds
// up the forwarding goroutines; call it at scrape time, not per frame. A
// policy published by SetPolicy but not yet picked up by the owner is not
// reflected until the owner's next frame. Safe for concurrent use.
func (p *Pipe) Fill(now time.Time) DirFill {
	var f DirFill
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.nanos(now)
	f.Aggregate = budgetFill(p.agg, t)
	for c, b := range p.class {
		f.Classes[c] = budgetFill(b, t)
	}
	return f
}

func budgetFill(b *bucket.Budget, t int64) BudgetFill {
	if b == nil {
		return BudgetFill{}
	}
	l := b.Limits()
	pk, by := b.Fill(t)
	return BudgetFill{Packets: pk, Bytes: by, PacketsLimited: l.PPS > 0, BytesLimited: l.BytesPerSec > 0}
}
