# Hexpulse: the two set-up commands are `make up` and `make test`. Each installs what it needs.
# Slow-to-build things are cached outside the clone, under $(HEXPULSE_CACHE).

HEXPULSE_CACHE ?= $(HOME)/.cache/hexpulse
export HEXPULSE_CACHE
export CARGO_TARGET_DIR ?= $(HEXPULSE_CACHE)/target

# `make up` broker: durable sqlite storage on the usual Kafka port.
UP_BROKER_PORT ?= 9092
UP_PARTITIONS ?= 6
UP_ARGS ?=
# `make up`'s MQTT bridge: against UP_MQTT_BROKER (HOST:PORT) when set, else against a Mosquitto on
# 127.0.0.1:UP_MQTT_PORT (the one listening there, or one started by scripts/mosquitto.sh when
# Mosquitto is installed); without either, no bridge.
UP_MQTT_BROKER ?=
UP_MQTT_PORT ?= 1883

.PHONY: up reset test soak lint bench fuzz build assets broker-install broker-up broker-down help

help:
	@echo "make up    - run the whole pipeline on this machine (local broker, local lake, demo traffic)"
	@echo "make reset - forget make up's data: stop its brokers (Kafka, Mosquitto), delete their state and this clone's .run/ (lake, registry)"
	@echo "make test  - run the whole test suite (starts and stops its own broker)"
	@echo "make lint  - rustfmt, clippy, unused dependencies and the crates' layering"
	@echo "make soak  - the soak test for 30 minutes (SOAK=2h for longer; SOAK_BUILD=dev on the test build; make test runs 3 minutes)"
	@echo "make bench - run the benchmarks (see load-tests/RESULTS.md)"
	@echo "make fuzz  - libFuzzer runs of every target, bounded (make test runs the targets over their seeds); longer: scripts/fuzz.sh run TARGET SECS"

# The map page's MapLibre bundle (npm), embedded into the binary.
assets:
	scripts/assets.sh

build: assets
	@if [ ! -x $(CARGO_TARGET_DIR)/release/hexpulse ]; then \
	  echo "building the release binary into $(CARGO_TARGET_DIR)/release: the first build compiles every"; \
	  echo "dependency (about 20 minutes on 2 cores, less on more); later builds take a minute or two"; fi
	cargo build --release --locked -p hexpulse

fuzz:
	scripts/fuzz.sh smoke

broker-install:
	scripts/broker.sh install

broker-up: broker-install
	scripts/broker.sh start sqlite $(UP_BROKER_PORT)
	scripts/broker.sh topics $(UP_BROKER_PORT) $(UP_PARTITIONS) raw-readings

broker-down:
	scripts/broker.sh stop $(UP_BROKER_PORT)

up: broker-up build
	@mqtt=""; \
	if [ -n "$(UP_MQTT_BROKER)" ]; then mqtt="$(UP_MQTT_BROKER)"; \
	elif scripts/mosquitto.sh start $(UP_MQTT_PORT); then mqtt="127.0.0.1:$(UP_MQTT_PORT)"; fi; \
	set -x; HEXPULSE_CONFIG=config/demo.toml HEXPULSE__KAFKA__BROKERS=127.0.0.1:$(UP_BROKER_PORT) \
	  HEXPULSE__MQTT__BROKER="$${mqtt:-127.0.0.1:$(UP_MQTT_PORT)}" \
	  $(CARGO_TARGET_DIR)/release/hexpulse up $${mqtt:+--mqtt} \
	  --broker-restart "$(CURDIR)/scripts/broker.sh restart sqlite $(UP_BROKER_PORT)" $(UP_ARGS)

# The broker's state is machine-wide (in the cache, shared by every clone); the lake and the registry
# are this clone's (.run/). Both go, so that the next `make up` starts empty.
reset:
	@if pgrep -f '[r]elease/hexpulse up' >/dev/null; then echo "make up is running: stop it (Ctrl-C) first" >&2; exit 1; fi
	scripts/broker.sh stop $(UP_BROKER_PORT)
	scripts/mosquitto.sh stop $(UP_MQTT_PORT)
	rm -rf $(HEXPULSE_CACHE)/run/broker-$(UP_BROKER_PORT) $(HEXPULSE_CACHE)/run/mosquitto-$(UP_MQTT_PORT) .run
	@echo "reset: the broker on port $(UP_BROKER_PORT) has no topics, and .run/ (lake, registry) is gone"

test:
	scripts/test.sh

# The soak (hexpulse/tests/it/soak.rs) for longer, in a release build: make soak SOAK=2h. make test runs
# 3 minutes of it. SOAK_BUILD=dev runs it on the dev-profile build that `make test` makes anyway,
# which saves the release build (about 40 minutes on a cold machine).
SOAK ?= 30m
SOAK_BUILD ?= release
soak:
	HEXPULSE_SOAK=$(SOAK) HEXPULSE_SOAK_BUILD=$(SOAK_BUILD) scripts/test.sh --only soak

# Benchmarks: release build, a fresh in-memory broker, results into load-tests/results/*.json.
BENCH_BROKER_PORT ?= 19094
bench: broker-install build
	scripts/bench.sh $(BENCH_BROKER_PORT)

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	scripts/machete.sh
	python3 scripts/check_layers.py
