"""Fetches one Hugging Face repo snapshot for Switchyard (see fetch.sh).

Environment: HF_REPO_ID, HF_REVISION, MODEL_DIR, HF_ALLOW_PATTERNS (a JSON list;
empty means the whole repo) and optionally HF_TOKEN, which huggingface_hub
reads itself.
"""
import json
import os
import sys

from huggingface_hub import snapshot_download


def main() -> int:
    repo = os.environ["HF_REPO_ID"]
    revision = os.environ.get("HF_REVISION") or None
    patterns = json.loads(os.environ.get("HF_ALLOW_PATTERNS") or "[]") or None
    dest = os.environ["MODEL_DIR"]
    print(f"model-download: {repo}@{revision or 'default'} patterns={patterns} -> {dest}", flush=True)
    path = snapshot_download(repo_id=repo, revision=revision, local_dir=dest, allow_patterns=patterns)
    files = sorted(f for f in os.listdir(path) if not f.startswith("."))
    if not files:
        print("model-download: nothing was downloaded (check allowPatterns)", file=sys.stderr)
        return 1
    print(f"model-download: done: {', '.join(files)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
