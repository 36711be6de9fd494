# shaperd — see README.md. `make demo` and `make test` install what they need.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build tools deps test unit integration skips demo bench bench-micro lint fuzz clean install deb soak

all: build

deps:
	@scripts/deps.sh

# The version stamped into the binary (shaperd version, status --json,
# shaperd_build_info): the tag, or the commit, and -dirty for a modified tree.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/shaperd/shaperd/internal/version.version=$(VERSION) -X github.com/shaperd/shaperd/internal/version.commit=$(COMMIT)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/shaperd ./cmd/shaperd

tools:
	$(GO) build -o $(BIN)/flood ./scripts/netns/flood
	$(GO) build -o $(BIN)/sink ./scripts/netns/sink
	$(GO) build -o $(BIN)/probe ./scripts/netns/probe
	$(GO) build -o $(BIN)/craft ./scripts/netns/craft
	$(GO) build -o $(BIN)/demoview ./scripts/netns/demoview

# All tests: unit tests with -race, every benchmark once (so benchmark code
# cannot rot), then the netns integration tests one at a time against a daemon
# built without -race.
test: deps build tools unit integration skips

# The unit run's full go test -v output goes to bin/unit.log; the terminal
# gets each package's result and the whole output of every failed test.
# go vet runs every analyzer first, so the go test runs leave out their own
# vet pass (-vet=off): its analyzers are a subset of go vet's.
unit:
	$(GO) vet ./...
	@mkdir -p $(BIN)
	$(GO) test -race -vet=off -count=1 -v ./... 2>&1 | tee $(BIN)/unit.log | awk -f scripts/testsummary.awk ; exit $${PIPESTATUS[0]}
# TestMonthReplay replays 1 seed under -race (27x slower there); all 5 here.
	$(GO) test -vet=off -count=1 -run='^TestMonthReplay$$' ./quota/sim/
	$(GO) test -vet=off -run='^$$' -bench=. -benchtime=1x ./...
# packaging/ is a module of its own (nfpm stays out of the daemon's go.mod).
	cd packaging && $(GO) vet ./... && $(GO) test -vet=off -count=1 ./...

# One netns run at a time on a machine: the lab, OVS and the cores are shared.
NETNS_LOCK ?= /tmp/shaperd-netns.lock

# Every package with a netns test (its tests call internal/netnstest), one
# package at a time; the full go test -v output goes to bin/integration.log.
# make skips, last in make test, applies the rule for skips to both logs
# (scripts/checkskips.sh): what the unit run skipped must pass here, and
# nothing here may skip but the README's exceptions.
NETNS_PKGS = $(shell grep -rl --include='*_test.go' '"github.com/shaperd/shaperd/internal/netnstest"' . | xargs -r -n1 dirname | sort -u)

integration:
	@mkdir -p $(BIN)
	flock $(NETNS_LOCK) env SHAPERD_NETNS=1 SHAPERD_BIN=$(CURDIR)/$(BIN) $(GO) test -p 1 -count=1 -timeout 30m -v $(NETNS_PKGS) 2>&1 | tee $(BIN)/integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+\S+_test.go)' ; exit $${PIPESTATUS[0]}

skips:
	scripts/checkskips.sh $(BIN)/unit.log $(BIN)/integration.log

demo: deps build tools
	scripts/netns/demo.sh

bench-micro:
	$(GO) test -run='^$$' -bench=. -benchmem ./classify/ ./bucket/ ./forward/

# make bench: shaperd against no policy, nftables, tc ifb+tbf and OVS meters
# in one run on the netns lab (bench/e2e), plus the microbenchmarks; writes
# bench/results/ (Markdown, JSON, SVG); about 11 min. make bench-smoke: the CI
# variant (250-byte frames at the generator's maximum, 2 s windows), about
# 1.5 min with the builds; it fails if a system this tree and machine offer
# produces no row. Both build first, then take the netns lock to measure.
BENCH_OUT       ?= bench/results
BENCH_SMOKE_OUT ?= $(BIN)/bench-smoke
BENCH_FLAGS     ?=
BENCH_PKGS      := ./classify/ ./bucket/ ./forward/

.PHONY: bench-smoke

bench: deps build tools
	$(GO) build -o $(BIN)/bench-e2e ./bench/e2e
	$(GO) test -run='^$$' -bench='^$$' $(BENCH_PKGS) >/dev/null
	flock $(NETNS_LOCK) $(BIN)/bench-e2e -go $(GO) -out $(BENCH_OUT) $(BENCH_FLAGS)
# The kernel baseline's cost (docs/baseline.md), a netns measurement.
	flock $(NETNS_LOCK) env SHAPERD_NETNS=1 SHAPERD_BIN=$(CURDIR)/$(BIN) $(GO) test -tags bench -count=1 -v -run '^TestBaselineCost$$' ./integration/ | tee $(BENCH_OUT)/baseline-cost.txt; exit $${PIPESTATUS[0]}
# The bypass probe's p99 through shaperd against an nft limit's, paired
# rounds in one lab (docs/architecture.md), a netns measurement.
	flock $(NETNS_LOCK) env SHAPERD_NETNS=1 SHAPERD_BIN=$(CURDIR)/$(BIN) $(GO) test -tags bench -count=1 -v -run '^TestProbeAgainstNftLimit$$' ./integration/ | tee $(BENCH_OUT)/probe-vs-nft.txt; exit $${PIPESTATUS[0]}

bench-smoke: deps build tools
	$(GO) build -o $(BIN)/bench-e2e ./bench/e2e
	$(GO) test -run='^$$' -bench='^$$' $(BENCH_PKGS) >/dev/null
	flock $(NETNS_LOCK) $(BIN)/bench-e2e -go $(GO) -smoke -out $(BENCH_SMOKE_OUT) $(BENCH_FLAGS)

# make soak: the long robustness runs, outside make test's time, all under
# the soak build tag. TestSoakRotatingFloods for SOAK (default 30m, at
# least 10m): max-rate floods rotating across 10 quarantined ports, RSS
# and goroutines within 5% after the warm-up, counters monotonic, nothing
# logged above INFO (docs/scale.md); TestKill9RandomOVS (kill -9 at 20
# random instants on an OVS bridge, docs/faults.md) and TestScale100PortsOVS
# (100 OVS ports, docs/scale.md).
SOAK ?= 30m
soak: deps build tools
	flock $(NETNS_LOCK) env SHAPERD_NETNS=1 SHAPERD_BIN=$(CURDIR)/$(BIN) SHAPERD_SOAK=$(SOAK) $(GO) test -tags soak -count=1 -timeout 0 -v -run '^(TestSoakRotatingFloods|TestKill9RandomOVS|TestScale100PortsOVS)$$' ./integration/

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...

# make fuzz: each fuzz target in turn, 10 minutes each (FUZZTIME=30s for a
# quick pass), one worker (the machines have two shared cores). Crashers
# land in the package's testdata/fuzz, which make test then replays.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzClassify$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./classify/
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./rules/
	$(GO) test -run='^$$' -fuzz='^FuzzStep$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./forward/
	$(GO) test -run='^$$' -fuzz='^FuzzReadSnapshot$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./quota/
	$(GO) test -run='^$$' -fuzz='^FuzzRestore$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./quota/
	$(GO) test -run='^$$' -fuzz='^FuzzLoad$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./config/
	$(GO) test -run='^$$' -fuzz='^FuzzRequest$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./control/
	$(GO) test -run='^$$' -fuzz='^FuzzWebhook$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./alerts/
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./statefile/
	$(GO) test -run='^$$' -fuzz='^FuzzStateEntry$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./daemon/
	$(GO) test -run='^$$' -fuzz='^FuzzParseIntent$$' -fuzztime=$(or $(FUZZTIME),10m) -parallel=1 ./daemon/

clean:
	rm -rf $(BIN)

# Installs the binary, the systemd units and an example config (kept if
# present). DESTDIR and PREFIX as usual.
PREFIX ?= /usr/local
install: build
	install -D -m 0755 $(BIN)/shaperd $(DESTDIR)$(PREFIX)/bin/shaperd
	install -D -m 0644 deploy/systemd/shaperd.service $(DESTDIR)/etc/systemd/system/shaperd.service
	install -D -m 0644 deploy/systemd/shaperd-release.service $(DESTDIR)/etc/systemd/system/shaperd-release.service
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/shaperd/README.md
	install -d $(DESTDIR)$(PREFIX)/share/doc/shaperd/docs && install -m 0644 docs/*.md $(DESTDIR)$(PREFIX)/share/doc/shaperd/docs/
	test -e $(DESTDIR)/etc/shaperd/shaperd.yaml || install -D -m 0640 deploy/shaperd.yaml $(DESTDIR)/etc/shaperd/shaperd.yaml

# make deb: bin/shaperd_<version>_<arch>.deb (packaging/, docs/packaging.md):
# the binary make build stamps, both units (/lib/systemd/system), the example
# config as a conffile (/etc/shaperd/shaperd.yaml, 0640), man pages and
# bash/zsh/fish completions generated by the binary. The package's version is
# VERSION in Debian's spelling; file times are the commit's.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
deb: build
	cd packaging && $(GO) build -o $(abspath $(BIN))/mkdeb .
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(BIN)/mkdeb -bin $(BIN)/shaperd -version $(VERSION) -repo . -out $(BIN)
