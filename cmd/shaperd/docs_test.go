package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// The README and docs/ are checked so that they cannot rot: every relative
// link resolves (to a heading, when it names one), and every shaperd command
// line shown in a code block parses with the CLI's own parser.

const repoRoot = "../.."

// docFiles lists the README and every Markdown file under docs/.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{filepath.Join(repoRoot, "README.md")}
	err := filepath.WalkDir(filepath.Join(repoRoot, "docs"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("docs/: %v", err)
	}
	if len(files) < 2 {
		t.Fatalf("no Markdown files under docs/")
	}
	return files
}

// mdLine is one line of a Markdown file, with whether it is inside a fenced
// code block.
type mdLine struct {
	n      int
	text   string
	inCode bool
	info   string // the code block's info string: "", "yaml", "synopsis", ...
}

func readMarkdown(t *testing.T, path string) []mdLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []mdLine
	fence, info := "", ""
	for i, l := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimLeft(l, " ")
		switch {
		case fence == "" && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")):
			fence, info = trimmed[:3], strings.TrimSpace(trimmed[3:])
			out = append(out, mdLine{i + 1, l, false, ""})
			continue
		case fence != "" && strings.HasPrefix(trimmed, fence):
			fence, info = "", ""
			out = append(out, mdLine{i + 1, l, false, ""})
			continue
		}
		out = append(out, mdLine{i + 1, l, fence != "", info})
	}
	return out
}

// slug is the anchor GitHub gives a heading.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

var headingRE = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)

func anchorsOf(t *testing.T, path string) map[string]bool {
	a := map[string]bool{}
	for _, l := range readMarkdown(t, path) {
		if l.inCode {
			continue
		}
		if m := headingRE.FindStringSubmatch(l.text); m != nil {
			a[slug(m[1])] = true
		}
	}
	return a
}

// synopsisRE matches the alternatives after the first in a synopsis (a|b|c).
var synopsisRE = regexp.MustCompile(`\|[^\s\]|]+`)

var linkRE = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// inlineCodeRE removes `code` spans, whose brackets are not links.
var inlineCodeRE = regexp.MustCompile("`[^`]*`")

func TestDocsLinks(t *testing.T) {
	anchors := map[string]map[string]bool{}
	checked := 0
	for _, f := range docFiles(t) {
		for _, l := range readMarkdown(t, f) {
			if l.inCode {
				continue
			}
			for _, m := range linkRE.FindAllStringSubmatch(inlineCodeRE.ReplaceAllString(l.text, ""), -1) {
				target := m[1]
				if regexp.MustCompile(`^[a-z][a-z0-9+.-]*:`).MatchString(target) {
					continue // http:, https:, mailto:
				}
				checked++
				path, anchor, _ := strings.Cut(target, "#")
				file := f
				if path != "" {
					file = filepath.Join(filepath.Dir(f), path)
					if _, err := os.Stat(file); err != nil {
						t.Errorf("%s:%d: link %q: %v", f, l.n, target, err)
						continue
					}
				}
				if anchor == "" {
					continue
				}
				if !strings.HasSuffix(file, ".md") {
					t.Errorf("%s:%d: link %q: an anchor into a file that is not Markdown", f, l.n, target)
					continue
				}
				if anchors[file] == nil {
					anchors[file] = anchorsOf(t, file)
				}
				if !anchors[file][anchor] {
					t.Errorf("%s:%d: link %q: %s has no heading #%s", f, l.n, target, file, anchor)
				}
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d relative links found: the scan is broken", checked)
	}
}

// shellWords splits a command line as a POSIX shell would for the simple
// lines docs show: quotes, backslash escapes, and the end of the command at
// an unquoted comment, pipe, list or redirection.
func shellWords(line string) ([]string, bool) {
	var words []string
	var cur strings.Builder
	inWord := false
	quote := rune(0)
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else if r == '\\' && quote == '"' && i+1 < len(rs) {
				i++
				cur.WriteRune(rs[i])
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote = r
			inWord = true
		case r == '\\' && i+1 < len(rs):
			i++
			cur.WriteRune(rs[i])
			inWord = true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case !inWord && r == '#', r == '|', r == ';', r == '&', r == '>', r == '<':
			if inWord {
				words = append(words, cur.String())
			}
			return words, true
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, false
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, true
}

// docCommand is one shaperd command line found in a code block.
type docCommand struct {
	where string
	line  string
	args  []string
}

func docCommands(t *testing.T) []docCommand {
	var cmds []docCommand
	for _, f := range docFiles(t) {
		lines := readMarkdown(t, f)
		for i := 0; i < len(lines); i++ {
			l := lines[i]
			if !l.inCode {
				continue
			}
			text := strings.TrimSpace(l.text)
			start := l.n
			for strings.HasSuffix(text, `\`) && i+1 < len(lines) && lines[i+1].inCode {
				i++
				text = strings.TrimSuffix(text, `\`) + " " + strings.TrimSpace(lines[i].text)
			}
			if l.info == "synopsis" {
				// A synopsis continues on indented lines; its optional parts
				// are checked as if given, and of alternatives the first.
				for i+1 < len(lines) && lines[i+1].inCode && strings.HasPrefix(lines[i+1].text, " ") {
					i++
					text += " " + strings.TrimSpace(lines[i].text)
				}
				text = synopsisRE.ReplaceAllString(text, "")
				text = strings.NewReplacer("[", " ", "]", " ").Replace(text)
			}
			words, ok := shellWords(text)
			if !ok && strings.Contains(text, "shaperd ") {
				t.Errorf("%s:%d: unbalanced quotes in %q", f, start, text)
				continue
			} else if !ok {
				continue // a diagram, not a command
			}
			words = slices.DeleteFunc(words, func(w string) bool { return w == "$" })
			for len(words) > 0 && (words[0] == "sudo" || strings.Contains(words[0], "=") && !strings.HasPrefix(words[0], "-")) {
				words = words[1:] // sudo, VAR=value
			}
			if len(words) == 0 || filepath.Base(words[0]) != "shaperd" {
				continue
			}
			cmds = append(cmds, docCommand{where: f + ":" + strconv.Itoa(start), line: text, args: words[1:]})
		}
	}
	return cmds
}

// parseOnly runs the CLI's own lookup, flag parser and argument check on
// args, and nothing else: no command runs.
func parseOnly(args []string) error {
	root := newRoot()
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return err
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		return err
	}
	return cmd.ValidateRequiredFlags()
}

func TestDocsCommandsParse(t *testing.T) {
	cmds := docCommands(t)
	if len(cmds) < 10 {
		t.Fatalf("only %d shaperd command lines found in the docs: the scan is broken", len(cmds))
	}
	for _, c := range cmds {
		if err := parseOnly(c.args); err != nil {
			t.Errorf("%s: %q: %v", c.where, c.line, err)
		}
	}
	for _, c := range cmds {
		t.Logf("%s: %s", c.where, c.line)
	}
	t.Logf("%d shaperd command lines parsed", len(cmds))
}

// The checks must be able to fail: a misspelt flag, an unknown command and a
// missing argument are refused by parseOnly, and a broken link is found.
func TestDocsChecksCanFail(t *testing.T) {
	for _, bad := range [][]string{
		{"quarantine", "vm-1", "--ppz", "10"},
		{"quarantin", "vm-1"},
		{"set"},
		{"quota", "add", "acme", "--port", "vm-1"},
	} {
		if parseOnly(bad) == nil {
			t.Errorf("parseOnly(%q) accepted", bad)
		}
	}
	if words, _ := shellWords(`sudo bin/shaperd quarantine "vm 1" --pps 5 # comment | x`); !slices.Equal(words, []string{"sudo", "bin/shaperd", "quarantine", "vm 1", "--pps", "5"}) {
		t.Errorf("shellWords: %q", words)
	}
	if slug("The kernel half: one BPF program for both backends") != "the-kernel-half-one-bpf-program-for-both-backends" {
		t.Errorf("slug: %q", slug("The kernel half: one BPF program for both backends"))
	}
	if slug("`status --json`") != "status---json" {
		t.Errorf("slug: %q", slug("`status --json`"))
	}
}
