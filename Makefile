# cascadefs: `make demo` runs the main job on the embedded default (a
# directory archive); `make test` installs what the tests need and runs them.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
TOOLS := $(CURDIR)/.tools
GO ?= go

.PHONY: build tools test unit lint bench crash compat demo sim protections clean

build:
	$(GO) build -o bin/cascadefs ./cmd/cascadefs

# The pinned MinIO server, built once into .tools/ (about 5 minutes), and
# the pinned etcd server (tools/etcd/go.mod; about a minute).
tools: $(TOOLS)/minio $(TOOLS)/etcd
$(TOOLS)/minio:
	mkdir -p $(TOOLS)
	cd /tmp && GOBIN=$(TOOLS) GOFLAGS=-mod=mod $(GO) install github.com/minio/minio@$(MINIO_VERSION)
$(TOOLS)/etcd: tools/etcd/go.mod tools/etcd/go.sum tools/etcd/main.go
	mkdir -p $(TOOLS)
	cd tools/etcd && $(GO) build -o $(TOOLS)/etcd .

# The unit tests, then the integration tests, with coverage: the unit
# test binaries and the daemons and commands the integration tests start
# (built with -cover) write into COVERDIR, and the merged coverage is
# printed by package at the end.
COVERDIR ?= $(CURDIR)/bin/cover
UNIT_PKGS = $$($(GO) list ./... | grep -v /integration$$)
# versitygw too: a test keeps one archive copy on MinIO and one on it.
test: tools $(TOOLS)/versitygw build
	scripts/need-system.sh
	rm -rf $(COVERDIR) && mkdir -p $(COVERDIR) && chmod 1777 $(COVERDIR)
	CASCADEFS_REQUIRE_ALL=1 $(GO) test -tags failpoints -count=1 -timeout 20m -cover -coverpkg=./... $(UNIT_PKGS) -args -test.gocoverdir=$(COVERDIR)
	CASCADEFS_REQUIRE_ALL=1 CASCADEFS_COVERDIR=$(COVERDIR) $(GO) test -tags failpoints -count=1 -timeout 45m ./integration
	@echo "Coverage by package, unit tests and the daemons of the integration tests merged ($(COVERDIR)):"
	@$(GO) tool covdata percent -i=$(COVERDIR) | sed 's|github.com/cascadefs/cascadefs/||' | sort

# The randomized crash suite at full length (a short run is part of make
# test): kill -9 at named failpoints and random moments under a mixed
# workload, then every file checked and reconcile run. Outcomes are
# appended to CRASH_REPORT (see docs/CRASH.md).
CRASH_TRIALS ?= 100
CRASH_CLUSTER_TRIALS ?= 30
CRASH_PAUSE_TRIALS ?= 30
CRASH_REPORT ?= $(CURDIR)/crash-report.md
crash: tools build
	scripts/need-system.sh
	CASCADEFS_REQUIRE_ALL=1 CASCADEFS_CRASH_TRIALS=$(CRASH_TRIALS) CASCADEFS_CRASH_CLUSTER_TRIALS=$(CRASH_CLUSTER_TRIALS) \
		CASCADEFS_CRASH_PAUSE_TRIALS=$(CRASH_PAUSE_TRIALS) \
		CASCADEFS_CRASH_REPORT=$(CRASH_REPORT) $(GO) test -tags failpoints -count=1 -run '^TestCrashSuite' -timeout 120m -v ./integration

# The archive tests and the integration tests that use S3, against a second
# S3 server: versitygw with its POSIX backend (built into .tools/, about 2
# minutes; its backend keeps metadata in xattrs, which /tmp must support).
VERSITYGW_VERSION := v1.8.0
COMPAT_TESTS := TestMigrateThenReadBack|TestSparseFileKeepsItsHoles|TestLeaderBytes|TestDF|TestRateLimits|TestReconcile$$|TestSpaceMonitorKeepsTheQuota|TestKill9DuringMigrationAndRecall|TestFailoverReleasesWaitingReaders|TestInterruptedReaderGetsEINTR|TestRenameWhileRecallQueued|TestSealedArchive
$(TOOLS)/versitygw:
	mkdir -p $(TOOLS)
	cd /tmp && GOBIN=$(TOOLS) GOFLAGS=-mod=mod $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)
compat: tools $(TOOLS)/versitygw build
	scripts/need-system.sh
	CASCADEFS_REQUIRE_ALL=1 CASCADEFS_S3_SERVER=versitygw $(GO) test -count=1 -timeout 20m ./archive
	CASCADEFS_REQUIRE_ALL=1 CASCADEFS_S3_SERVER=versitygw $(GO) test -count=1 -timeout 30m -run '$(COMPAT_TESTS)' ./integration

# The ownership simulator (cluster/owner/sim_test.go) over more seeds than
# the 10,000 of make test; a failing seed replays with its trace:
# CASCADEFS_SIM_SEED=N go test -run TestSimulation -v ./cluster/owner
SEEDS ?= 100000
sim:
	CASCADEFS_SIM_SEEDS=$(SEEDS) $(GO) test -count=1 -run '^TestSimulation$$' -v -timeout 0 ./cluster/owner

# Each protection (internal/protect) switched off in turn: its tests must
# fail. Prints the table (about 10 minutes).
protections: tools build
	scripts/need-system.sh
	CASCADEFS_REQUIRE_ALL=1 $(GO) run ./internal/protect/run

# Every package but the integration tests: no root, no servers (the
# parts of archive and repo that need MinIO or etcd say so and skip).
unit:
	$(GO) test -tags failpoints -count=1 $(UNIT_PKGS)

# go vet and staticcheck (pinned, built into .tools/), on the production
# and the test build.
STATICCHECK_VERSION := v0.8.2
$(TOOLS)/staticcheck:
	mkdir -p $(TOOLS)
	cd /tmp && GOBIN=$(TOOLS) GOFLAGS=-mod=mod $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
lint: $(TOOLS)/staticcheck
	$(GO) vet ./...
	$(GO) vet -tags failpoints ./...
	$(TOOLS)/staticcheck ./...
	$(TOOLS)/staticcheck -tags failpoints ./...

bench: tools build
	scripts/need-system.sh
	CASCADEFS_REQUIRE_ALL=1 $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./integration

demo: build
	scripts/demo.sh

clean:
	rm -rf bin demo
