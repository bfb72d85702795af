# The two front-door commands:
#   make demo   installs what is missing, builds and runs the demo (hsgd_demo)
#   make test   installs what is missing, builds everything, checks the formatting and runs the
#               whole test suite
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: all setup configure build demo explain test format-check format sanitize bench clean \
	gpu-check gpu-check-bundle

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
	cmake --build $(BUILD) -j $(JOBS) --target hsgd_demo
	$(BUILD)/examples/hsgd_demo

explain: configure
	cmake --build $(BUILD) -j $(JOBS) --target schedule_explain
	$(BUILD)/examples/schedule_explain --hierarchy 2:8,4:32,8:64 --steps 32 --param-bytes 46800000

test: build
	@bash cmake/scripts/format_check.sh
	cd $(BUILD) && ctest -j $(JOBS) --output-on-failure
	$(MAKE) --no-print-directory sanitize

# Every C++ and CUDA source against .clang-format (clang-format 14, installed by setup).
format-check: setup
	@bash cmake/scripts/format_check.sh

# Formats every C++ and CUDA source in place.
format: setup
	@find include tests examples bench -type f \( -name '*.hpp' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu' \) -print0 | xargs -0 clang-format-14 -i

# The multi-rank suites (local backend, averagers, the NCCL communicator on its host double)
# again under ThreadSanitizer and AddressSanitizer (+ UBSan).
sanitize: setup
	@for s in thread address; do \
	  cmake -S . -B $(BUILD)-$$s $(if $(shell command -v ninja 2>/dev/null),-G Ninja,) \
	    -DSTRATA_SANITIZER=$$s -DSTRATA_BUILD_EXAMPLES=OFF -DSTRATA_BUILD_BENCH=OFF \
	    -DSTRATA_ENABLE_CUDA=ON >/dev/null && \
	  cmake --build $(BUILD)-$$s -j $(JOBS) --target strata_multirank_suites && \
	  (cd $(BUILD)-$$s && ctest -j $(JOBS) -L multirank --output-on-failure) || exit 1; \
	done

bench: configure
	cmake --build $(BUILD) -j $(JOBS) --target schedule_bench
	$(BUILD)/bench/schedule_bench

# On a machine with a GPU: the GPU tests (exit 77 is a failure there), the multi-process NCCL
# tests, the docs' device example, device_averaging_bench and nccl_mode_bench, within 8
# minutes; a JSON summary in GPU_CHECK_OUT (default $(BUILD)/gpu-check). Uses gpu-bundle/ when
# present, else builds.
gpu-check:
	@BUILD=$(BUILD) bash cmake/scripts/gpu_check.sh

# On the build machine: gpu-bundle/, the prebuilt GPU programs, the MPI runtime, the vendored
# headers and a manifest, for a GPU machine without compilers, packages or network.
gpu-check-bundle: configure
	@python3 cmake/scripts/gpu_check_bundle.py --build $(BUILD) --out gpu-bundle --jobs $(JOBS)

clean:
	rm -rf $(BUILD) $(BUILD)-thread $(BUILD)-address
