# cascadefs: `make demo` runs the main job on the embedded default (a
# directory archive); `make test` installs what the tests need and runs them.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
TOOLS := $(CURDIR)/.tools
GO ?= go

.PHONY: build tools test unit bench demo clean

build:
	$(GO) build -o bin/cascadefs ./cmd/cascadefs

# The pinned MinIO server, built once into .tools/ (about 5 minutes).
tools: $(TOOLS)/minio
$(TOOLS)/minio:
	mkdir -p $(TOOLS)
	cd /tmp && GOBIN=$(TOOLS) GOFLAGS=-mod=mod $(GO) install github.com/minio/minio@$(MINIO_VERSION)

test: tools build
	scripts/need-system.sh
	CASCADEFS_REQUIRE_ALL=1 $(GO) test -count=1 -timeout 45m ./...

unit:
	$(GO) test -count=1 ./stub ./dmapi ./archive

bench: tools build
	CASCADEFS_REQUIRE_ALL=1 $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./integration

demo: build
	scripts/demo.sh

clean:
	rm -rf bin demo
