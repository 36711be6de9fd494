package forward

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/hashlimit"
	"github.com/shaperd/shaperd/rules"
)

// This file holds steps 1 to 6 of the evaluation order (see Policy): the
// guard, the control and bypass budgets with the per-source limit on new
// bypass connections, the classes of Policy.Rules and the built-in
// classes, and the final charge of the aggregate and the quota.

// RuleCounters are the counters of one class of Policy.Rules in one
// direction: the frames it decided (passed, or dropped with a reason,
// including those a later stage such as the aggregate dropped) and the
// frames that were over its limits, whatever its action then did with
// them. Written by the direction's goroutines, read by anyone.
type RuleCounters struct {
	ClassCounters
	Overlimit atomic.Uint64
}

// RuleStats is a snapshot of one class of Policy.Rules.
type RuleStats struct {
	// Name is the class's name; Rule its canonical text.
	Name string
	Rule string
	ClassStats
	// Overlimit counts frames over the class's limits (class-wide or per
	// address), whatever the action did with them.
	Overlimit uint64
	// TableLen, TableCap and TableEvictions describe the per-address
	// table (all 0 without per src or per dst).
	TableLen, TableCap int
	TableEvictions     uint64
}

// ruleRT is the pipe's state for one class of the current rules.
type ruleRT struct {
	budget *bucket.Budget   // class-wide; nil without limits
	keys   *hashlimit.Table // per address; nil without per
	c      *RuleCounters
}

// guardReasons maps a guard verdict to its drop reason.
var guardReasons = [guard.NumVerdicts]Reason{
	guard.DropMAC:  ReasonGuardMAC,
	guard.DropIP:   ReasonGuardIP,
	guard.DropARP:  ReasonGuardARP,
	guard.DropND:   ReasonGuardND,
	guard.DropDHCP: ReasonGuardDHCP,
	guard.DropRA:   ReasonGuardRA,
}

// BypassConnBurst is the burst of --bypass-conn-per-source: a source may
// open its whole per-minute allowance at once, then one more each
// 60/N seconds.
func bypassConnLimits(perMinute int) bucket.Limits {
	return bucket.Limits{PPS: float64(perMinute) / 60, BurstPackets: perMinute}
}

// applyRulesLocked builds the state of pol's classes and of the bypass
// connection limit, keeping the budgets, tables and counters of classes
// whose names (and limits) did not change. Caller holds mu (or owns a
// pipe no goroutine runs yet); p.current is the old policy or nil.
func (p *Pipe) applyRulesLocked(pol *Policy, now time.Time) error {
	t := p.nanos(now)
	if pol.BypassConnPerSource > 0 {
		l := bypassConnLimits(pol.BypassConnPerSource)
		if p.bypassConn == nil {
			var err error
			if p.bypassConn, err = hashlimit.New(hashlimit.Config{Limits: l}); err != nil {
				return err
			}
		} else if p.bypassConn.Limits() != l {
			if err := p.bypassConn.SetLimits(l, t); err != nil {
				return err
			}
		}
	} else {
		p.bypassConn = nil
	}

	var old *rules.Set
	if p.current != nil {
		old = p.current.Rules
		if old == pol.Rules {
			return nil
		}
	}
	set := pol.Rules
	rt := make([]ruleRT, set.Len())
	counters := make(map[string]*RuleCounters, set.Len())
	for i := range rt {
		cl := set.Class(i)
		var prev *ruleRT
		var prevCl *rules.Class
		if j := old.Index(cl.Name); j >= 0 {
			prev, prevCl = &p.rt[j], old.Class(j)
		}
		r := &rt[i]
		if cl.HasLimits() {
			if prev != nil && prev.budget != nil {
				r.budget = prev.budget
				if prevCl.Limits != cl.Limits {
					if err := r.budget.SetLimits(cl.Limits, t); err != nil {
						return err
					}
				}
			} else {
				var err error
				if r.budget, err = bucket.New(cl.Limits, t); err != nil {
					return err
				}
			}
		}
		if cl.Per != rules.PerNone {
			if prev != nil && prev.keys != nil && prevCl.Per == cl.Per && prevCl.Table == cl.Table {
				r.keys = prev.keys
				if prevCl.PerLimits != cl.PerLimits {
					if err := r.keys.SetLimits(cl.PerLimits, t); err != nil {
						return err
					}
				}
			} else {
				var err error
				if r.keys, err = hashlimit.New(hashlimit.Config{Limits: cl.PerLimits, Size: cl.Table}); err != nil {
					return err
				}
			}
		}
		r.c = p.ruleCounters[cl.Name]
		if r.c == nil {
			r.c = new(RuleCounters)
		}
		counters[cl.Name] = r.c
	}
	p.remapQueueLocked(old, set)
	p.rt, p.ruleCounters = rt, counters
	return nil
}

// remapQueueLocked points the queued frames decided by a class of old at
// the class of the same name in set. A frame whose class is gone, or no
// longer shapes, is charged to the aggregate alone when it leaves.
func (p *Pipe) remapQueueLocked(old, set *rules.Set) {
	q := &p.q
	for k := 0; k < q.count; k++ {
		d := &q.descs[(q.head+k)%len(q.descs)]
		if d.rule < 0 {
			continue
		}
		j := -1
		if int(d.rule) < old.Len() {
			j = set.Index(old.Class(int(d.rule)).Name)
		}
		if j < 0 {
			d.rule, d.charge = -1, false
			continue
		}
		d.rule = int16(j)
		d.charge = d.charge && set.Class(j).Mode == rules.Shape
	}
}

// RuleStats returns a snapshot of the counters of each class of the policy
// in force, in rule order. It briefly takes mu. Safe for concurrent use.
func (p *Pipe) RuleStats() []RuleStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := p.current.Rules
	out := make([]RuleStats, set.Len())
	for i := range out {
		cl, r := set.Class(i), &p.rt[i]
		s := &out[i]
		s.Name, s.Rule = cl.Name, cl.String()
		s.ClassStats = r.c.snapshot()
		s.Overlimit = r.c.Overlimit.Load()
		if r.keys != nil {
			s.TableLen, s.TableCap, s.TableEvictions = r.keys.Len(), r.keys.Cap(), r.keys.Evictions()
		}
	}
	return out
}

func (k *ClassCounters) snapshot() ClassStats {
	var s ClassStats
	s.PassedPackets = k.PassedPackets.Load()
	s.PassedBytes = k.PassedBytes.Load()
	s.DroppedBytes = k.DroppedBytes.Load()
	for r := range k.Drops {
		s.Drops[r] = k.Drops[r].Load()
		s.DroppedPackets += s.Drops[r]
	}
	return s
}

// decision is what the classes (step 4) decided for a frame.
type decision struct {
	dropped bool   // the classes refused the frame
	reason  Reason // why, when dropped
	rule    int    // the class of the rules that decided it, or -1
	rc      *RuleCounters
	name    string // that class's name
	// budget and keys/ref are what a police-mode decision charges when
	// the frame passes; nil when nothing.
	budget *bucket.Budget
	keys   *hashlimit.Table
	ref    hashlimit.Ref
	t      int64 // the keys' clock, ns since the pipe's epoch
	// deferred (shape mode): the class budget is charged when the frame
	// leaves the queue: the rule's (mode shape), or bclass's.
	deferred bool
	bclass   classify.Class
}

// builtinBudget returns the built-in class whose budget a frame of class
// c is charged to: its own, or other's for a malformed frame.
func builtinBudget(c classify.Class) classify.Class {
	if c == classify.Malformed {
		return classify.Other
	}
	return c
}

// keyAddr returns the address a per-address budget keys f by.
func keyAddr(f *classify.Frame, per rules.Per) netip.Addr {
	if per == rules.PerSource {
		return f.SrcIP
	}
	return f.DstIP
}

// classesLocked runs step 4 for a frame of class c (not bypass, not
// control): the classes of the rules in order, then the built-in class.
// Budgets are only checked here (Fits); the caller charges them when the
// later stages admit the frame too. It fills in d, which the caller zeroed.
// (d is a pointer, not a result: the per-frame copies of a decision cost
// about a tenth of a frame's time.) Caller holds mu.
func (p *Pipe) classesLocked(d *decision, c classify.Class, f *classify.Frame, w cost, t int64) {
	set := p.current.Rules
	shape := p.sh.mode == Shape
	d.rule, d.bclass = -1, builtinBudget(c)
	for i := 0; i < set.Len(); i++ {
		if !set.Matches(i, f) {
			continue
		}
		j := i
	chain:
		for {
			cl, r := set.Class(j), &p.rt[j]
			d.rule, d.rc, d.name = j, r.c, cl.Name
			if shape && cl.Mode == rules.Shape {
				d.deferred = true
				return
			}
			fits, over := true, Reason(0)
			if r.budget != nil && !r.budget.FitsN(t, w.pkts, w.bytes) {
				fits, over = false, ReasonClassBudget
			}
			if fits && r.keys != nil {
				d.t = t
				d.ref = r.keys.Lookup(keyAddr(f, cl.Per), d.t)
				if !r.keys.FitsN(d.ref, d.t, w.pkts, w.bytes) {
					fits, over = false, ReasonDestBudget
					if cl.Per == rules.PerSource {
						over = ReasonSourceBudget
					}
				}
			}
			if fits {
				d.budget, d.keys = r.budget, r.keys
				return
			}
			r.c.Overlimit.Add(1)
			switch cl.Action {
			case rules.Continue:
				d.rule, d.rc, d.name = -1, nil, ""
				i = j
				break chain
			case rules.Reclassify:
				tj, b := set.Target(j)
				if tj >= 0 {
					j = tj
					continue chain
				}
				d.rule, d.rc, d.name = -1, nil, ""
				p.builtinLocked(d, b, w, t, shape)
				return
			default:
				d.dropped, d.reason = true, over
				return
			}
		}
	}
	p.builtinLocked(d, d.bclass, w, t, shape)
}

// builtinLocked decides a frame by the budget of built-in class b: in
// shape mode that budget is charged when the frame leaves the queue.
func (p *Pipe) builtinLocked(d *decision, b classify.Class, w cost, t int64, shape bool) {
	d.bclass = b
	if shape {
		d.deferred = true
		return
	}
	if bb := p.class[b]; bb != nil {
		if !bb.FitsN(t, w.pkts, w.bytes) {
			d.dropped, d.reason = true, ReasonClassBudget
			return
		}
		d.budget = bb
	}
}

// finishLocked runs steps 5 and 6 for a frame the classes admitted in
// police mode: the aggregate and the quota must admit it too, and then
// every budget is charged, or none. It reports whether the frame passes,
// and why not. Caller holds mu.
func (p *Pipe) finishLocked(d *decision, w cost, now time.Time, t int64) (Reason, bool) {
	if p.agg != nil && !p.agg.FitsN(t, w.pkts, w.bytes) {
		return ReasonAggregateBudget, false
	}
	if q := p.current.Quota; q != nil && !q.Admit(now, p.dir, w.bytes, false) {
		return ReasonQuota, false
	}
	p.takeLocked(d, w, t)
	if p.agg != nil {
		p.agg.TakeN(t, w.pkts, w.bytes)
	}
	return 0, true
}

// takeLocked charges what a police-mode decision checked.
func (p *Pipe) takeLocked(d *decision, w cost, t int64) {
	if d.budget != nil {
		d.budget.TakeN(t, w.pkts, w.bytes)
	}
	if d.keys != nil {
		d.keys.TakeN(d.ref, d.t, w.pkts, w.bytes)
	}
}

// priorityLocked runs steps 2, 3 and 6 for a control or bypass frame: its
// own budget and, for a new bypass connection, the per-source limit; the
// quota counts it but cannot refuse it. It reports whether the frame
// passes, and why not. Caller holds mu.
func (p *Pipe) priorityLocked(c classify.Class, f *classify.Frame, w cost, now time.Time, t int64) (Reason, bool) {
	b := p.class[c]
	if c == classify.Control {
		if b != nil && !b.FitsN(t, w.pkts, w.bytes) {
			return ReasonControlBudget, false
		}
	} else {
		var ref hashlimit.Ref
		newConn := p.bypassConn != nil && f.IsTCPSyn()
		if newConn {
			ref = p.bypassConn.Lookup(f.SrcIP, t)
			if !p.bypassConn.Fits(ref, t, w.bytes) {
				return ReasonBypassConn, false
			}
		}
		if b != nil && !b.FitsN(t, w.pkts, w.bytes) {
			return ReasonBypassBudget, false
		}
		if newConn {
			p.bypassConn.Take(ref, t, w.bytes)
		}
	}
	if b != nil {
		b.TakeN(t, w.pkts, w.bytes)
	}
	if q := p.current.Quota; q != nil {
		q.Admit(now, p.dir, w.bytes, true)
	}
	return 0, true
}
