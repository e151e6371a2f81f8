"""Quality: AE reconstruction at 4x on held-out demo-corpus text after at most 20 CPU-minutes of training.

Runs the demo's `quality` recipe (tiny Llama backbone, then ICAE with position identifiers), prints a table and
one JSON line. Target: BLEU-4 >= 0.9 on held-out passages, total training time <= 20 minutes.
"""

import argparse
import json
import tempfile
import time

import torch

from context_compression.demo import RECIPES, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="quality", choices=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.process_time()
    with tempfile.TemporaryDirectory() as scratch:
        result = run_demo(args.output_dir or scratch, recipe=args.recipe)
    cpu_minutes = (time.process_time() - started) / 60
    train_minutes = result.backbone_minutes + result.icae_minutes
    rows = [
        ("held-out passages", len(result.passages), ""),
        ("context tokens / memory slots", f"{result.context_tokens:.0f} / {result.memory_slots:.0f}",
         f"{result.compression_ratio:.1f}x"),
        ("training wall minutes (backbone + ICAE)",
         f"{result.backbone_minutes:.1f} + {result.icae_minutes:.1f}", "<= 20: " + ("PASS" if train_minutes <= 20 else "FAIL")),
        ("process CPU minutes (all threads)", f"{cpu_minutes:.1f}", ""),
        ("BLEU-4", f"{result.bleu:.4f}", ">= 0.9: " + ("PASS" if result.bleu >= 0.9 else "FAIL")),
        ("exact-token accuracy", f"{result.token_accuracy:.4f}", ""),
        ("exact match", f"{result.exact_match:.4f}", ""),
    ]
    for name, value, target in rows:
        print(f"{name:<42} {value!s:<16} {target}")
    print(json.dumps({
        "benchmark": "quality", "recipe": args.recipe, "bleu_4": result.bleu, "token_accuracy": result.token_accuracy,
        "exact_match": result.exact_match, "compression_ratio": result.compression_ratio,
        "train_minutes": train_minutes, "cpu_minutes": cpu_minutes,
        "targets": {"bleu_4": {"target": ">= 0.9", "pass": result.bleu >= 0.9},
                    "train_minutes": {"target": "<= 20", "pass": train_minutes <= 20}},
    }))


if __name__ == "__main__":
    main()
