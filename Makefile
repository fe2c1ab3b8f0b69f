# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
DEMO_TASKS ?= synth-digits synth-signs synth-glyphs

# The serving image (Dockerfile). ENGINE=podman works too; BASE is the base image; WHEELS=1 installs from
# wheelhouse/ only (fill it with `make wheelhouse`: wheels for this machine's Python, which BASE must have).
ENGINE ?= docker
IMAGE ?= tailorrt:latest
BASE ?= python:3.12-slim
WHEELS ?= 0
ROOTFS ?= build/rootfs
DEBIAN_MIRROR ?= http://deb.debian.org/debian
OFFLINE_BASE ?= localhost/debian-python:bookworm

.PHONY: demo test .venv clean image wheelhouse base-image image-offline

.venv: $(VENV)/installed.stamp

$(VENV)/installed.stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train,test]'
	touch $@

demo: .venv
	@for t in $(DEMO_TASKS); do $(BIN)/tailor train --task $$t --model-dir $(DEMO_DIR) --resume || exit 1; done
	$(BIN)/tailor export --model-dir $(DEMO_DIR) --bench --precision int8
	$(BIN)/tailor info --model-dir $(DEMO_DIR)
	$(BIN)/tailor report --model-dir $(DEMO_DIR)
	$(BIN)/python -m tailorrt.tools.serve_demo --model-dir $(DEMO_DIR)

test: .venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

image:
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) --build-arg BASE=$(BASE) --build-arg WHEELS=$(WHEELS) -t $(IMAGE) .

wheelhouse:
	$(PYTHON) -m pip wheel --quiet --disable-pip-version-check --wheel-dir wheelhouse . pip setuptools wheel

# Offline, where no image registry can be reached (root, podman): a Debian base with python3 from Debian's packages,
# the wheels from this machine, then the image from both.
base-image:
	rm -rf $(ROOTFS)
	debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm $(ROOTFS) $(DEBIAN_MIRROR)
	rm -rf $(ROOTFS)/var/cache/apt/archives/*.deb $(ROOTFS)/var/lib/apt/lists/* $(ROOTFS)/usr/share/doc \
		$(ROOTFS)/usr/share/man $(ROOTFS)/usr/share/locale
	tar -C $(ROOTFS) -c . | $(ENGINE) import - $(OFFLINE_BASE)
	rm -rf $(ROOTFS)

image-offline: wheelhouse
	$(ENGINE) image inspect $(OFFLINE_BASE) >/dev/null 2>&1 || $(MAKE) base-image ENGINE=$(ENGINE)
	$(MAKE) image ENGINE=$(ENGINE) BASE=$(OFFLINE_BASE) WHEELS=1 IMAGE=$(IMAGE)

clean:
	rm -rf $(VENV) runs .pytest_cache
