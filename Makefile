# The appliance's front door. `make run` builds and boots it; `make test` runs
# every test. Every target that needs Python depends on `deps`.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# What compiling the appliance's kernel (build/kernel.py) needs.
KERNEL_BUILD_PKGS := gcc make libc6-dev binutils bc flex bison libelf-dev zstd
# What compiling the hot path with mypyc (build/compiled.py) needs beside
# gcc: the headers of the image's Python (Debian's python3.11), against which
# the image's modules are compiled; the venv's interpreter brings its own.
MYPYC_BUILD_PKGS := gcc python3.11-dev
# System tools the tests and the image builder use, installed when missing.
# Services among them (nsd, unbound, knot, avahi) must never start on the
# host: apt runs under a policy-rc.d that refuses every start, and the tests
# run each one in the foreground inside a namespace of their own.
APT_PKGS := iproute2 iputils-ping dnsutils tcpdump nftables nsd dnsperf \
            dnsmasq-base qemu-system-x86 cpio xz-utils zstd binutils \
            unbound knot knot-dnsutils ldnsutils bind9-utils openssl \
            ca-certificates avahi-daemon chromium chromium-driver prometheus curl \
            $(KERNEL_BUILD_PKGS) $(MYPYC_BUILD_PKGS)
# The kernel `make image` puts in the image: the appliance's own (build/kernel.config)
# or Debian's stock kernel with its NIC modules (`make image KERNEL=debian`).
KERNEL ?= appliance
PYTEST_ARGS ?=
BENCH_ARGS ?=
# The hot path compiled with mypyc for `make serve`, `make bench` and the
# image (build/compiled.py, cached by input hash); MYPYC=0: the pure Python.
MYPYC ?= 1
export MYPYC

.PHONY: deps test test-slow unit bench fuzz run boot image smoke serve clean compiled

deps: $(STAMP)
	@missing=$$(for p in $(APT_PKGS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing with apt: $$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "deps: need root for apt-get (missing: $$missing)" >&2; exit 1; fi; \
	  made_policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  rc=$$?; [ -n "$$made_policy" ] && rm -f /usr/sbin/policy-rc.d; \
	  for s in nsd unbound knot avahi-daemon; do systemctl disable --now $$s >/dev/null 2>&1 || true; done; \
	  [ $$rc = 0 ] || exit $$rc; \
	fi

$(STAMP): pyproject.toml
	@echo "deps: creating $(VENV) with the project and its test tools"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

# `make test` is every test but the slow ones (marked `slow`: minutes each,
# e.g. a second kernel build from nothing); `make test-slow` runs those.
test: deps
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: deps
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest -q tests/unit tests/stack $(PYTEST_ARGS)

bench: deps
	$(PY) -m bench $(BENCH_ARGS)

# Hostile input at full length: each fuzzer prints its counts and fails on
# any broken invariant; `make test` runs a short version of each.
fuzz: deps
	$(PY) -m tests.fuzz frames 1000000
	$(PY) -m tests.fuzz_dns --messages 100000

serve: deps
	$(PY) build/compiled.py run -m unikernel serve

# the compiled folder for the venv's Python (built if the sources changed)
compiled: deps
	$(PY) build/compiled.py

image: deps
	$(PY) build/make_image.py --kernel $(KERNEL)

boot: image
	$(PY) build/boot.py --tap tap0

run: image
	$(PY) build/boot.py --auto

smoke: image
	$(PY) -m pytest -q tests/boot

clean:
	rm -rf images .pytest_cache .hypothesis
