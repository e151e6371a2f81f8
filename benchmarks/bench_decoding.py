"""
Decoding from a compressed context vs from the full context (default 4096 tokens: 8 segments x 128 slots = 1024
memory slots at rate 4), same model, same short prompt:

- KV-cache bytes after prefill (sum of the key and value tensors of every layer of the `DynamicCache`) for
  [memory + prompt] vs [full context + prompt]. The prompt's share is measured on its own, so the context parts'
  ratio must equal the compression ratio exactly.
- per-token greedy decode latency (median over the steps of several interleaved rounds), and prefill time.

    python benchmarks/bench_decoding.py [--quick]
"""

import argparse
import statistics
import time

# First: _common sets OMP_WAIT_POLICY, which OpenMP reads when torch loads it.
import _common  # noqa: F401
import torch
from _common import DEFAULT, QUICK, build_icae, load_average, print_json, print_table, random_context, setup_cpu


def cache_bytes(cache) -> int:
    """Bytes held by the keys and values of every layer of a transformers `Cache`."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def prefill(model, input_ids, compressed=None):
    return model(input_ids=input_ids, compressed=compressed, use_cache=True, logits_to_keep=1)


def timed(fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, its wall seconds and its CPU seconds (this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def greedy_round(model, input_ids, compressed, steps: int) -> dict:
    """Prefill, then `steps` greedy steps one token at a time on the cache; wall and CPU seconds of each."""
    outputs, prefill_wall, prefill_cpu = timed(prefill, model, input_ids, compressed)
    cache = outputs.past_key_values
    token = outputs.logits[:, -1].argmax(-1, keepdim=True)
    step_wall, step_cpu = [], []
    for _ in range(steps):
        outputs, wall, cpu = timed(model, input_ids=token, past_key_values=cache, use_cache=True)
        token = outputs.logits[:, -1].argmax(-1, keepdim=True)
        step_wall.append(wall)
        step_cpu.append(cpu)
    return {"prefill_wall": prefill_wall, "prefill_cpu": prefill_cpu, "step_wall": step_wall, "step_cpu": step_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--context-length", type=int, default=None, help="default 4096 (quick: 512)")
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32, help="greedy steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant (first one warms up)")
    args = parser.parse_args()
    setup_cpu()
    config = QUICK if args.quick else DEFAULT
    context_length = args.context_length or 2 * config.context_length
    model = build_icae(config)
    context = random_context(context_length, config.vocab_size, seed=4)
    prompt = random_context(args.prompt_length, config.vocab_size, seed=5)

    with torch.inference_mode():
        compressed, compress_wall, compress_cpu = timed(model.compress, context)
        slots = int(compressed.num_slots[0])
        placeholders = torch.tensor([model.memory_placeholders(slots)])
        variants = {
            "compressed": (torch.cat([placeholders, prompt], dim=1), compressed),
            "full": (torch.cat([context, prompt], dim=1), None),
        }
        prompt_bytes = cache_bytes(prefill(model, prompt).past_key_values)
        sizes = {}
        for name, (ids, memory) in variants.items():
            cache = prefill(model, ids, memory).past_key_values
            sizes[name] = {"positions": cache.get_seq_length(), "bytes": cache_bytes(cache)}
            sizes[name]["bytes_per_position"] = sizes[name]["bytes"] / sizes[name]["positions"]
            sizes[name]["context_bytes"] = sizes[name]["bytes"] - prompt_bytes

        rounds = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (ids, memory) in variants.items():
                rounds[name].append(greedy_round(model, ids, memory, args.steps))

    latency = {}
    for name, results in rounds.items():
        measured = results[1:] if len(results) > 1 else results
        latency[name] = {
            "step_wall_s": statistics.median(t for r in measured for t in r["step_wall"]),
            "step_cpu_s": statistics.median(t for r in measured for t in r["step_cpu"]),
            "prefill_wall_s": statistics.median(r["prefill_wall"] for r in measured),
            "prefill_cpu_s": statistics.median(r["prefill_cpu"] for r in measured),
        }
    compression_ratio = float(compressed.compression_ratio[0])
    context_ratio = sizes["full"]["context_bytes"] / sizes["compressed"]["context_bytes"]
    total_ratio = sizes["full"]["bytes"] / sizes["compressed"]["bytes"]
    exact = context_ratio == compression_ratio

    mib = 2**20
    c, f = sizes["compressed"], sizes["full"]

    def timing(key, scale=1.0):
        compressed_s, full_s = latency["compressed"][key], latency["full"][key]
        return [scale * compressed_s, scale * full_s, full_s / compressed_s, ""]

    rows = [
        ["cache positions after prefill", c["positions"], f["positions"], f["positions"] / c["positions"], ""],
        ["KV-cache bytes per position", c["bytes_per_position"], f["bytes_per_position"], 1.0, ""],
        ["KV-cache MiB, total", c["bytes"] / mib, f["bytes"] / mib, total_ratio, ""],
        ["KV-cache MiB, context part", c["context_bytes"] / mib, f["context_bytes"] / mib, context_ratio,
         f"= compression ratio {compression_ratio:g}: {'PASS' if exact else 'FAIL'}"],
        ["decode ms/token, wall", *timing("step_wall_s", 1e3)],
        ["decode ms/token, cpu", *timing("step_cpu_s", 1e3)],
        ["prefill s, wall", *timing("prefill_wall_s")],
        ["prefill s, cpu", *timing("prefill_cpu_s")],
        ["compress s (once per context), wall / cpu", f"{compress_wall:.3g} / {compress_cpu:.3g}", "", "", ""],
    ]
    print_table(
        f"decoding, {'QUICK' if args.quick else 'default'} config ({config.num_hidden_layers} layers x "
        f"{config.hidden_size}), context {context_length} tok -> {slots} slots, prompt {args.prompt_length} tok, "
        f"{args.steps} greedy steps x {max(1, args.rounds - 1)} measured rounds, float32, {torch.get_num_threads()} "
        f"threads, load average {load_average():.1f}",
        rows,
        ["measure", "compressed", "full context", "full / compressed", "check"],
    )
    print_json(
        "decoding",
        {
            "quick": args.quick,
            "config": config.with_context(context_length).__dict__,
            "threads": torch.get_num_threads(),
            "load_average": load_average(),
            "context_length": context_length,
            "memory_slots": slots,
            "prompt_length": args.prompt_length,
            "prompt_cache_bytes": prompt_bytes,
            "cache": sizes,
            "compression_ratio": compression_ratio,
            "context_cache_ratio": context_ratio,
            "total_cache_ratio": total_ratio,
            "latency": latency,
            "compress_wall_s": compress_wall,
            "compress_cpu_s": compress_cpu,
            "targets": {"context_cache_ratio_equals_compression_ratio": {"value": context_ratio, "pass": exact}},
        },
    )


if __name__ == "__main__":
    main()
