package rules

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/internal/fuzzcorpus"
)

// corpusSeeds are the seed corpus of FuzzParse, checked in under
// testdata/fuzz/FuzzParse (see TestFuzzCorpus): the rules of the package
// comment, every keyword, the error cases, and YAML documents.
func corpusSeeds() map[string]string {
	seeds := map[string]string{
		"examples": `ssh-brute: tcp dport 22 syn per src pps 5 burst 10
dns:       udp dport 53 pps 1000 burst 200 continue
ping:      icmp bps 2kbit drop
big:       size >1400 block
scan:      syn per dst pps 20 reclassify tcp-syn`,
		"every-match": "x: not src 198.18.0.0/15,2001:db8::/32 dst 10.0.0.1 vlan none ether ipv4,0x86dd,arp proto tcp,17,0-5 sport 1-1024 dport 22 port 80,443 flags ack,!rst,fin size <64,100-200,>=1500 frag ipv6 ip ipv4 arp tcp udp icmp syn any",
		"every-limit": "x: any pps 0.5 burst 3 bps 1.5mbit burst-bytes 64k per dst pps 1e3 bps 10kbps burst 7 burst-bytes 2000 table 99 continue mode police",
		"shape":       "bulk: ipv4 pps 100 bps 1mbit mode shape",
		"reclassify":  "a: syn pps 1 reclassify b\nb: any pps 2 reclassify udp\nc: any per src block",
		"comments":    "# comment\n\n  a: tcp # trailing\n\t\r\nb: udp\r\n",
		"yaml-list":   "classes:\n  - ssh-brute: tcp dport 22 syn per src pps 5\n  - \"dns: udp dport 53 pps 1000 continue\"\n  - 'ping: icmp bps 2kbit'\n  - exempt:\n",
		"yaml-block":  "classes: |\n  web: tcp dport 80,443 pps 5000\n  big: size >1400 block\n",
		"yaml-bad":    "classes:\n  - a:\n      b: c\n  - [x]\n  - 5\n",
		"colons":      "a: src ::1 dst ::ffff:1.2.3.4 b: c",
		"spaces":      "a : dport 80 , 443 size > 100 size >= 5",
		"unicode":     "ä: tcp\nb: dport ٣",
		"long-name":   strings.Repeat("a", 40) + ": any",
		"many":        manyClasses(MaxClasses + 1),
		"big-numbers": "a: pps 1e308 bps 99999999999999999999tbit burst 99999999999 burst-bytes 9999999999gb table 9999999999",
	}
	return seeds
}

// fuzzFrames are decoded frames every parsed class is matched against.
var fuzzFrames = []*classify.Frame{
	fr{src: "198.18.0.2", dst: "198.18.1.9", proto: 6, sport: 40000, port: 22, flags: 0x02}.frame(),
	fr{src: "2001:db8::2", dst: "2001:db8:1::9", proto: 17, sport: 5353, port: 53, vlans: 2, vlan: 7}.frame(),
	fr{size: 60}.frame(),
	fr{src: "198.18.0.2", dst: "198.18.1.9", proto: 17, frag: true}.frame(),
}

// FuzzParse feeds arbitrary text to ParseLines, ParseRule and ParseYAML. It
// checks that they never panic, that errors are *Error located in the
// input, and that every class that parses renders to a canonical form that
// parses back to the same class.
func FuzzParse(f *testing.F) {
	for _, s := range corpusSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		lines := strings.Count(src, "\n") + 1
		cs, err := ParseLines(src)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not an *Error", err)
			}
			if e.Line < 1 || e.Line > lines || e.Column < 1 {
				t.Fatalf("error located at line %d, column %d of %d lines: %v", e.Line, e.Column, lines, err)
			}
		}
		if set, err := NewSet(cs); err == nil {
			for i := range set.Len() {
				c := set.Class(i)
				for _, fr := range fuzzFrames {
					set.Matches(i, fr)
				}
				text := c.String()
				back, err := ParseRule(text)
				if err != nil {
					t.Fatalf("canonical form %q of a parsed class does not parse: %v", text, err)
				}
				if back.String() != text {
					t.Fatalf("canonical form not stable: %q then %q", text, back.String())
				}
				a := *c
				a.Line, a.Column, back.Line, back.Column = 0, 0, 0, 0
				if !reflect.DeepEqual(normal(a), normal(back)) {
					t.Fatalf("%q reads back as %+v, was %+v", text, back, a)
				}
			}
			if again, err := Parse(set.String()); err != nil || !again.Equal(set) {
				t.Fatalf("set does not read back: %v", err)
			}
		}
		first, _, _ := strings.Cut(src, "\n")
		if _, err := ParseRule(first); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("ParseRule: %v", err)
		}
		if _, err := ParseYAML([]byte(src), "$.classes"); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("ParseYAML: %v", err)
		}
	})
}

// normal clears the differences that do not change a class's meaning:
// nil and empty slices.
func normal(c Class) Class {
	for i := range c.Match.terms {
		t := &c.Match.terms[i]
		if len(t.spans) == 0 {
			t.spans = nil
		}
		if len(t.prefixes) == 0 {
			t.prefixes = nil
		}
	}
	if len(c.Match.terms) == 0 {
		c.Match.terms = nil
	}
	return c
}

// crashers are inputs the fuzzer found, kept in testdata/fuzz/FuzzParse
// under the names it gave them.
var crashers = map[string]string{
	"abff33899e7cd4f9": "00", // found when FuzzParse was written (e79c16a)
}

// TestFuzzCorpus checks that the checked-in corpus is exactly corpusSeeds
// and crashers: every file a valid corpus entry of FuzzParse, with its
// text, and none missing. With SHAPERD_WRITE_CORPUS=1 it (re)writes the
// seeds first.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	seeds := map[string][]any{}
	for name, s := range corpusSeeds() {
		seeds[name] = []any{s}
	}
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := fuzzcorpus.Write(dir, seeds); err != nil {
			t.Fatal(err)
		}
	}
	entries := maps.Clone(seeds)
	for name, s := range crashers {
		entries[name] = []any{s}
	}
	fuzzcorpus.Check(t, dir, entries, "")
}
