# The two front-door commands:
#   make demo   installs what is missing, builds and runs the demo
#   make test   installs what is missing, builds everything and runs the whole test suite
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: all setup configure build demo test bench clean

all: build

setup:
	@bash cmake/setup-debian.sh

configure: setup
	@if [ ! -f $(BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD) $(if $(shell command -v ninja 2>/dev/null),-G Ninja,) ; \
	else cmake $(BUILD) >/dev/null; fi

build: configure
	cmake --build $(BUILD) -j $(JOBS)

demo: configure
	cmake --build $(BUILD) -j $(JOBS) --target schedule_explain
	$(BUILD)/examples/schedule_explain --hierarchy 2:8,4:32,8:64 --steps 32 --param-bytes 46800000

test: build
	cd $(BUILD) && ctest -j $(JOBS) --output-on-failure

bench: configure
	cmake --build $(BUILD) -j $(JOBS) --target schedule_bench
	$(BUILD)/bench/schedule_bench

clean:
	rm -rf $(BUILD)
