"""
How fast `ICAEForCausalLM.compress` is, against two references measured in the same run:

(a) one document: `compress` vs "the floor", a single forward of the encoder (backbone + LoRA, no lm_head) over
    exactly the rows the compressor must process (each segment with its memory tokens appended, as one batch), and
    vs the same forward through the CausalLM head. Target: compress <= 1.05x the floor.
(b) a batch of 8 documents of different lengths in one `compress` call vs compressing them the original ICAE's way
    (getao/icae `_compress`): a loop over documents and, inside, over segments, each segment a separate CausalLM
    forward with `output_hidden_states=True`, memory = `hidden_states[-1]` at the memory positions.
    Target: throughput >= 1.5x, with memories equal to 1e-4.

    python benchmarks/bench_compression.py [--quick]
"""

import argparse
import math

# First: _common sets OMP_WAIT_POLICY, which OpenMP reads when torch loads it.
import _common  # noqa: F401
import torch
from _common import (
    DEFAULT,
    QUICK,
    build_icae,
    load_average,
    print_json,
    print_table,
    random_context,
    setup_cpu,
    time_interleaved,
    verdict,
)

FLOOR_TARGET = 1.05
BATCH_TARGET = 1.5
AGREEMENT = 1e-4


def segment_embeds(model, context: torch.LongTensor) -> list[torch.Tensor]:
    """
    The rows the encoder sees for one document, split as the original does: ceil(n / capacity) segments of
    ceil(n / segments) tokens (the last shorter), each embedded and followed by the memory-token embeddings.
    """
    n = context.shape[-1]
    count = math.ceil(n / model.config.segment_capacity)
    length = math.ceil(n / count)
    memory = model.memory_token_embed.weight[: model.config.num_memory_tokens]
    embed = model.language_model.get_input_embeddings()
    return [
        torch.cat([embed(context[start : start + length]), memory], dim=0) for start in range(0, n, length)
    ]


def original_compress(model, context: torch.LongTensor) -> torch.Tensor:
    """
    One document compressed the original ICAE's way: one CausalLM forward (LoRA on, lm_head included, all hidden
    states returned) per segment, memory = last hidden state at the memory positions, segments concatenated.
    """
    m = model.config.num_memory_tokens
    slots = []
    with model.adapter(True):
        for rows in segment_embeds(model, context):
            outputs = model.language_model(inputs_embeds=rows.unsqueeze(0), output_hidden_states=True)
            slots.append(outputs.hidden_states[-1][0, -m:])
    return torch.cat(slots, dim=0)


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.LongTensor | None]:
    """Right-pad (n_i, d) rows into one batch; the attention mask is None when no row is padded."""
    lengths = torch.tensor([len(row) for row in rows])
    inputs_embeds = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    if bool((lengths == lengths.max()).all()):
        return inputs_embeds, None
    return inputs_embeds, (torch.arange(inputs_embeds.shape[1]) < lengths[:, None]).long()


def encoder_backbone(model, rows: list[torch.Tensor]) -> None:
    """One forward of the encoder (backbone + LoRA, no lm_head) over `rows` as one right-padded batch."""
    inputs_embeds, mask = pad_rows(rows)
    with model.adapter(True):
        model.language_model.base_model(inputs_embeds=inputs_embeds, attention_mask=mask, use_cache=False)


def bench_single(model, config, repeats: int) -> dict:
    """(a) compress vs the floor (encoder backbone forward over the same rows) and vs the CausalLM forward."""
    context = random_context(config.context_length, config.vocab_size, seed=1)
    rows = segment_embeds(model, context[0])
    inputs_embeds, mask = pad_rows(rows)

    def causal_lm():
        with model.adapter(True):
            model.language_model(inputs_embeds=inputs_embeds, attention_mask=mask, use_cache=False)

    with torch.inference_mode():
        times = time_interleaved(
            {
                "compress": lambda: model.compress(context),
                "floor": lambda: encoder_backbone(model, rows),
                "causal_lm": causal_lm,
                "original_loop": lambda: original_compress(model, context[0]),
            },
            repeats=repeats,
        )
        ours, reference = model.compress(context).memory_embeds[0], original_compress(model, context[0])
        difference = float((ours - reference).abs().max())
    cpu = times["cpu_s"]
    return {
        "context_length": config.context_length,
        "segments": len(rows),
        "encoder_rows_shape": list(inputs_embeds.shape[:2]),
        **times,
        "compress_over_floor": cpu["compress"] / cpu["floor"],
        "compress_over_causal_lm": cpu["compress"] / cpu["causal_lm"],
        "original_loop_over_compress": cpu["original_loop"] / cpu["compress"],
        "max_abs_memory_difference": difference,
    }


def bench_batch(model, config, repeats: int, batch_size: int = 8, chunk: int = 4) -> dict:
    """
    (b) one batched compress call vs the original's per-document, per-segment loop. Two encoder-only forwards over
    the same segments show where the time goes: all segments as one padded batch (what `compress` runs), and the
    segments sorted by length in padded chunks of `chunk` (what a chunked `compress` would run).
    """
    longest = config.context_length
    shortest = int(longest * 1500 / 2048)
    lengths = torch.linspace(shortest, longest, batch_size).long().tolist()
    ids = random_context(longest, config.vocab_size, seed=2, batch_size=batch_size)
    attention_mask = (torch.arange(longest) < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(attention_mask == 0, 0)
    contexts = [ids[i, :n] for i, n in enumerate(lengths)]
    rows = [row for context in contexts for row in segment_embeds(model, context)]
    by_length = sorted(rows, key=len)

    def chunked_floor():
        for start in range(0, len(by_length), chunk):
            encoder_backbone(model, by_length[start : start + chunk])

    with torch.inference_mode():
        times = time_interleaved(
            {
                "batched_compress": lambda: model.compress(ids, attention_mask),
                "original_loop": lambda: [original_compress(model, context) for context in contexts],
                "floor_one_batch": lambda: encoder_backbone(model, rows),
                f"floor_sorted_chunks_of_{chunk}": chunked_floor,
            },
            repeats=repeats,
        )
        compressed = model.compress(ids, attention_mask)
        reference = [original_compress(model, context) for context in contexts]
        difference = max(
            float((compressed.memory_embeds[i, : len(ref)] - ref).abs().max()) for i, ref in enumerate(reference)
        )
        slots_match = compressed.num_slots.tolist() == [len(ref) for ref in reference]
    cpu = times["cpu_s"]
    return {
        "lengths": lengths,
        "segments": len(rows),
        "padded_tokens": len(rows) * max(len(row) for row in rows),
        "real_tokens": sum(len(row) for row in rows),
        **times,
        "docs_per_cpu_second": {name: batch_size / t for name, t in cpu.items()},
        "throughput_ratio": cpu["original_loop"] / cpu["batched_compress"],
        "max_abs_memory_difference": difference,
        "slot_counts_match": slots_match,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--repeats", type=int, default=7, help="(a): timed calls per variant (median reported)")
    parser.add_argument("--batch-repeats", type=int, default=3, help="(b): timed calls per variant")
    parser.add_argument("--long-context", type=int, default=None, help="also report (a) at this length (default 2x)")
    args = parser.parse_args()
    setup_cpu()
    base = QUICK if args.quick else DEFAULT
    long_context = args.long_context or base.context_length * 2
    model = build_icae(base)

    single = [bench_single(model, base.with_context(n), args.repeats) for n in (base.context_length, long_context)]
    batch = bench_batch(model, base, args.batch_repeats)

    rows = []
    for result in single:
        wall, cpu = result["wall_s"], result["cpu_s"]
        ratio = result["compress_over_floor"]
        case = f"(a) 1 doc, {result['context_length']} tok, {result['segments']} seg"
        rows.append([case, "compress", wall["compress"], cpu["compress"], 1.0, ""])
        rows.append(["", "floor: encoder backbone fwd", wall["floor"], cpu["floor"], cpu["floor"] / cpu["compress"],
                     f"compress/floor {ratio:.3f} <= {FLOOR_TARGET}: {verdict(ratio <= FLOOR_TARGET)}"])
        rows.append(["", "encoder CausalLM fwd (+lm_head)", wall["causal_lm"], cpu["causal_lm"],
                     cpu["causal_lm"] / cpu["compress"], ""])
        rows.append(["", "original per-segment loop", wall["original_loop"], cpu["original_loop"],
                     result["original_loop_over_compress"], f"max |diff| {result['max_abs_memory_difference']:.2e}"])
    wall, cpu = batch["wall_s"], batch["cpu_s"]
    ok_batch = batch["throughput_ratio"] >= BATCH_TARGET
    ok_agree = batch["max_abs_memory_difference"] <= AGREEMENT and batch["slot_counts_match"]
    case = f"(b) 8 docs, {batch['lengths'][0]}-{batch['lengths'][-1]} tok"
    for name in cpu:
        note = f"{batch['docs_per_cpu_second'][name]:.3g} docs/cpu-s"
        if name == "original_loop":
            note += f"; ours/original throughput {batch['throughput_ratio']:.2f} >= {BATCH_TARGET}: {verdict(ok_batch)}"
        rows.append([case if name == "batched_compress" else "", name, wall[name], cpu[name],
                     cpu[name] / cpu["batched_compress"], note])
    rows.append(["", "memories agree", "", "", "",
                 f"max |diff| {batch['max_abs_memory_difference']:.2e} <= {AGREEMENT}: {verdict(ok_agree)}"])
    print_table(
        f"compression, {'QUICK' if args.quick else 'default'} config ({base.num_hidden_layers} layers x "
        f"{base.hidden_size}, {base.num_memory_tokens} slots x rate {base.mean_compression_rate}), float32, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} (b: {args.batch_repeats}), "
        f"load average {load_average():.1f}; ratios and targets use CPU time",
        rows,
        ["case", "variant", "wall s", "cpu s", "cpu / compress", "target"],
    )
    first = single[0]["compress_over_floor"]
    print_json(
        "compression",
        {
            "quick": args.quick,
            "config": base.__dict__,
            "threads": torch.get_num_threads(),
            "load_average": load_average(),
            "single_document": single,
            "batch": batch,
            "targets": {
                "compress_over_floor": {"value": first, "target": f"<= {FLOOR_TARGET}", "pass": first <= FLOOR_TARGET},
                "batch_throughput_ratio": {"value": batch["throughput_ratio"], "target": f">= {BATCH_TARGET}",
                                           "pass": ok_batch},
                "batch_memory_agreement": {"value": batch["max_abs_memory_difference"], "target": f"<= {AGREEMENT}",
                                           "pass": ok_agree},
            },
        },
    )


if __name__ == "__main__":
    main()
