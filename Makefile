# The two commands of the README. Both set up a fresh Debian machine (as root) first.
#   make run   - install dependencies, build Release, run the main job
#   make test  - install dependencies, build Release, run the test suite through CTest
#   make sanitize - the suite under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/);
#                   protect_shadow_gap=0 lets the CUDA driver map device memory where ASan's
#                   shadow gap would otherwise sit (needed on a GPU machine, harmless elsewhere)
JOBS ?= $(shell nproc)
BUILD ?= build
CMAKE_FLAGS ?=
APT_PACKAGES := build-essential cmake libdnnl-dev libboost-test-dev libhdf5-dev libomp-dev \
                python3-h5py python3-matplotlib openmpi-bin libopenmpi-dev

.PHONY: run test sanitize deps build clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/normlab run quick

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

sanitize: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNORMLAB_SANITIZE=ON $(CMAKE_FLAGS)
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:protect_shadow_gap=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf build build-asan
