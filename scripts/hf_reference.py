#!/usr/bin/env python3
"""Second numerical reference for the golden fixture.

Runs Hugging Face transformers' own Granite 4.0-H implementation
(GraniteMoeHybridForCausalLM) on the fixture's hf/ folder in float32 on the CPU
and compares its logits with golden.json (llama.cpp's), position by position,
and its greedy continuation with the golden tokens. Prints a Markdown table and
exits non-zero when the worst logit difference exceeds the tolerance.

    python3 scripts/hf_reference.py ../shared/fixtures/granite-hybrid-tiny [tolerance]
"""
import json
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    fx = sys.argv[1]
    tol = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-3
    golden = json.load(open(f"{fx}/golden.json"))
    torch.set_num_threads(4)
    t0 = time.time()
    try:
        model = AutoModelForCausalLM.from_pretrained(f"{fx}/hf", dtype=torch.float32)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(f"{fx}/hf", torch_dtype=torch.float32)
    model.eval()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {type(model).__name__}, "
          f"float32 on CPU, loaded in {time.time() - t0:.1f}s")
    print()
    print("| prompt | tokens | max abs logit diff vs llama.cpp | argmax agree | HF greedy == golden |")
    print("|---|---:|---:|---:|---|")
    worst = 0.0
    greedy_ok = True
    for p in golden["prompts"]:
        ids = torch.tensor([p["token_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double().numpy()
        ref = np.array(p["logits"], dtype=np.float64)
        diff = float(np.abs(logits - ref).max())
        worst = max(worst, diff)
        agree = int((logits.argmax(-1) == ref.argmax(-1)).sum())
        want = p["greedy_new_token_ids"]
        try:
            model.generation_config.eos_token_id = None
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(want),
                                 min_new_tokens=len(want), do_sample=False, pad_token_id=golden.get("pad", 457))
            got = out[0, ids.shape[1]:].tolist()
            same = "yes" if got == want else f"no: {got}"
            greedy_ok &= got == want
        except Exception as e:  # report, do not hide the logit comparison
            same = f"generate failed: {type(e).__name__}: {e}".replace("|", "/")[:200]
            greedy_ok = False
        print(f"| {p['name']} | {len(p['token_ids'])} | {diff:.3g} | {agree}/{len(ref)} | {same} |")
    print()
    verdict = "PASS" if worst <= tol else "FAIL"
    print(f"worst max abs logit difference (HF float32 vs llama.cpp golden): {worst:.3g} "
          f"(tolerance {tol:g}): {verdict}; greedy tokens identical: {greedy_ok}")
    sys.exit(0 if worst <= tol else 1)


if __name__ == "__main__":
    main()
