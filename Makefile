# Thin wrapper over CMake: `make demo`, `make test`, `make bench`. Set-up is automatic.
BUILD ?= build
JOBS ?= $(shell nproc)
SOFTPROMPT_CUDA ?= OFF
CMAKE_FLAGS ?=

.PHONY: all demo test bench configure build bootstrap clean

all: build

bootstrap:
	@bash scripts/bootstrap.sh

configure: bootstrap
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DSOFTPROMPT_CUDA=$(SOFTPROMPT_CUDA) $(CMAKE_FLAGS) > $(BUILD).configure.log 2>&1 || { cat $(BUILD).configure.log; exit 1; }

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: configure
	@cmake --build $(BUILD) -j $(JOBS) --target softprompt
	@$(BUILD)/cli/softprompt demo --output $(BUILD)/demo-adapter

bench: build
	@bash bench/run_all.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
