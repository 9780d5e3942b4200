# The two commands a newcomer needs: `make quickstart` and `make test`. Each builds .venv first.
SHELL := /bin/bash
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export MUJOCO_GL ?= egl
export TOKENIZERS_PARALLELISM ?= false

.PHONY: quickstart test venv gl browser clean bench test-lerobot ffmpeg docs

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

# tests/test_report.py opens report.html in headless Chromium (Debian's package); install it when
# missing and we may (without it that one test is skipped).
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the report test needs chromium: sudo apt-get install chromium (skipped without it)" >&2; fi; fi

quickstart: venv
	.venv/bin/vla0 quickstart --out runs/quickstart

test: venv browser
	$(PY) -m pytest tests

bench: venv
	$(PY) bench/sim.py && $(PY) bench/decode.py && $(PY) bench/serve.py

# vla0 as a LeRobot policy (packages/lerobot-policy-vla0), tested against the real lerobot 0.4.4
# in its own venv (about 6.6 GB: the CUDA build of torch 2.14.1 is the CPU-usable torch that has a
# matching torchvision on this registry). requirements-lerobot.txt says why each piece is there.
# The .pth line puts a stand-in for lerobot's GR00T module (unbuildable on transformers 5) before
# lerobot loads: see packages/lerobot-policy-vla0/lerobot_vla0_compat.py.
LEROBOT_PY := .venv-lerobot/bin/python
.venv-lerobot/.ready: requirements.txt requirements-lerobot.txt packages/lerobot-policy-vla0/pyproject.toml
	test -x $(LEROBOT_PY) || python3 -m venv .venv-lerobot
	$(LEROBOT_PY) -m pip install -q --upgrade pip
	$(LEROBOT_PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	grep -viE '^(fsspec|huggingface_hub|hf-xet|httpx|httpcore)' requirements.txt >.venv-lerobot/constraints.txt
	$(LEROBOT_PY) -m pip install -q -c .venv-lerobot/constraints.txt -r requirements-lerobot.txt
	$(LEROBOT_PY) -m pip install -q --no-deps lerobot==0.4.4 torchcodec==0.14.0
	$(LEROBOT_PY) -m pip install -q --no-deps -e . -e packages/vla0-client -e packages/lerobot-policy-vla0
	echo "import lerobot_vla0_compat" >"$$($(LEROBOT_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lerobot_vla0_compat.pth"
	touch $@

# torchcodec (LeRobot's video decoder) loads the system's FFmpeg libraries (Debian 12: FFmpeg 5.1).
ffmpeg:
	@if ! ldconfig -p | grep -q 'libavcodec.so'; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4 libavutil57 >/dev/null; \
	  else echo "LeRobot's video decoder needs FFmpeg: sudo apt-get install libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4" >&2; exit 1; fi; fi

test-lerobot: .venv-lerobot/.ready gl ffmpeg
	$(LEROBOT_PY) -m pytest tests_lerobot

# The manual (mkdocs.yml, docs/) into site/, strict: a broken link or reference fails. The docs
# tools are pure Python (no torch) and go into .venv, whose vla0 the CLI reference is generated from.
.venv/.docs-ready: .venv/.ready requirements-docs.txt
	$(PY) -m pip install -q -c requirements.txt -r requirements-docs.txt
	touch $@

docs: .venv/.docs-ready
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf .venv .venv-lerobot runs site
