#!/bin/sh
# Downloads the Hugging Face repo $HF_REPO_ID at $HF_REVISION into $MODEL_DIR
# (the init container "model-download" of every Switchyard pod). A stamp file
# records a completed download, so a persistent volume is fetched only once per
# repo, revision and pattern set. Runs as a non-root user on a read-only root
# filesystem: everything it writes goes to $MODEL_DIR or $HOME (a scratch volume).
set -eu

stamp="$MODEL_DIR/.switchyard-download"
want="$HF_REPO_ID@$HF_REVISION $HF_ALLOW_PATTERNS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "model-download: $want already in $MODEL_DIR"
  exit 0
fi

export TMPDIR="$HOME/tmp"
mkdir -p "$TMPDIR" "$MODEL_DIR"
if [ -n "${PIP_PACKAGES:-}" ]; then
  echo "model-download: pip install $PIP_PACKAGES"
  # Word splitting is intended: both variables are space-separated lists.
  # shellcheck disable=SC2086
  python -m pip install --quiet --target "$HOME/pylib" ${PIP_EXTRA_ARGS:-} $PIP_PACKAGES
  export PYTHONPATH="$HOME/pylib${PYTHONPATH:+:$PYTHONPATH}"
fi

rm -f "$stamp"
python "$(dirname "$0")/fetch.py"
printf '%s' "$want" > "$stamp"
