# trusted-pool: see README.md.
CARGO ?= cargo
PORT ?= 9000
WORKERS ?= workers.json
MUSL := x86_64-unknown-linux-musl
# Where cargo builds: target/, or CARGO_TARGET_DIR where that is set.
BUILT := $(or $(CARGO_TARGET_DIR),target)
# SQLite (rusqlite, bundled) without the optional extensions libsqlite3-sys turns on and the job
# store never uses (full-text search, R-tree, dbstat, soundex, STAT4, column metadata, extension
# loading): 0.5 MiB less binary. Every build through make (and deploy/dist.sh) takes these.
LIBSQLITE3_FLAGS ?= $(shell cat deploy/sqlite-flags)
export LIBSQLITE3_FLAGS

.PHONY: build test run lint release static dist demo bench fuzz clean

build:
	$(CARGO) build

# The vendored tiny_http's own unit tests (its patches' parts) run with ours.
test:
	$(CARGO) test -p trusted-pool -p tiny_http --lib --bins --tests

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

run: build
	$(CARGO) run --bin trusted-pool -- --port $(PORT) --workers $(WORKERS)

release:
	$(CARGO) build --release --bin trusted-pool
	@ls -l $(BUILT)/release/trusted-pool

# SQLite (rusqlite, bundled) is C: the musl build needs a musl C compiler (Debian: musl-tools).
# The C (SQLite, ring) is built without unwind tables: no Rust code runs beneath a C frame, so
# no panic unwinds through one (deploy/musl-cflags; 85 KiB less binary).
MUSL_CFLAGS ?= $(shell cat deploy/musl-cflags)
static:
	rustup target add $(MUSL) >/dev/null 2>&1 || true
	@command -v musl-gcc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq musl-tools; } \
		|| { echo "make static needs musl-gcc (Debian package musl-tools)" >&2; exit 1; }
	CC_x86_64_unknown_linux_musl=musl-gcc CFLAGS_x86_64_unknown_linux_musl="$(MUSL_CFLAGS)" \
		$(CARGO) build --release --target $(MUSL) --bin trusted-pool
	@ls -l $(BUILT)/$(MUSL)/release/trusted-pool
	@file $(BUILT)/$(MUSL)/release/trusted-pool 2>/dev/null || true

# Static musl releases for x86_64 and aarch64 with checksums, tarballs under target/dist/
# (cargo-zigbuild and ziglang from PyPI are installed when missing); see deploy/dist.sh.
dist:
	bash deploy/dist.sh

# Two local development workers (no sandbox, loopback only) and a coordinator on port $(PORT).
demo: build
	@bash src/bin/dev-worker/demo.sh $(PORT)

# The fuzz loops of `make test`, long: each loop runs up to FUZZ_SECONDS (default 300).
FUZZ_SECONDS ?= 300
fuzz:
	TP_FUZZ_ITERATIONS=1000000000 TP_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --release --test fuzz_parsers --test fuzz_state_dir -- --nocapture

bench:
	$(CARGO) build --release --bin trusted-pool
	$(CARGO) bench --bench pool

clean:
	$(CARGO) clean
	rm -rf demo
