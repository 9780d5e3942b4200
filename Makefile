# The two commands a newcomer needs: `make quickstart` and `make test`. Each builds .venv first.
SHELL := /bin/bash
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export MUJOCO_GL ?= egl
export TOKENIZERS_PARALLELISM ?= false

.PHONY: quickstart test venv gl clean bench

# torch first, pinned: pip then leaves it alone for everything else. Never torchvision.
# For the tests: openpi-client without its numpy<2 pin, which its code does not need; ray, the
# optional extra vla0[ray] (--ray). requirements.txt pins everything vla0[sim,test] needs
# (simulation included: quickstart and the tests run Meta-World).
.venv/.ready: pyproject.toml requirements.txt requirements-libero.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -r requirements-libero.txt
	$(PY) -m pip install -q --no-deps libero==0.1.1  # its declared dependencies pull torchvision
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps openpi-client==0.1.2
	$(PY) -m pip install -q ray==2.60.0
	@if $(PY) -c "import torchvision" 2>/dev/null; then echo "torchvision is installed in .venv; remove it (pip uninstall torchvision): it breaks transformers here" >&2; exit 1; fi
	touch $@

venv: .venv/.ready gl

# MuJoCo renders offscreen through EGL (Mesa); install the libraries when missing and we may.
gl:
	@if ! ldconfig -p | grep -q 'libEGL.so.1' || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 >/dev/null; \
	  else echo "MuJoCo needs EGL: sudo apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1" >&2; exit 1; fi; fi

quickstart: venv
	.venv/bin/vla0 quickstart --out runs/quickstart

test: venv
	$(PY) -m pytest tests

bench: venv
	$(PY) bench/sim.py && $(PY) bench/decode.py && $(PY) bench/serve.py

clean:
	rm -rf .venv runs
