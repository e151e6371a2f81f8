"""
GPU only: bf16 autoencoding training steps of ICAE on a ~1B-parameter random-init Llama (hidden 2048, 18 layers, 32
heads, intermediate 5632, vocab 32000), context 2048, 128 slots at rate 4, LoRA r 128, with attention "sdpa" and
"flash_attention_2" (the latter when `flash_attn` imports). Reports tokens/s and model FLOPs utilisation.

Step = forward + backward + AdamW step over the trainable tensors (LoRA and memory embeddings), activation
checkpointing on the backbone, as `bench_training_step.py` runs it on CPU.

MFU = model FLOPs per step / step time / peak, with the 6N-per-token approximation applied to each token where it
runs through weights:

    FLOPs = 6 * (N_body + N_lora) * (T_encoder + T_decoder) + 6 * N_head * T_decoder

N_body = backbone parameters without the input-embedding table and lm_head, N_lora = LoRA parameters, N_head =
lm_head parameters (the encoder returns hidden states and never runs the lm_head), T_encoder = segment tokens + memory
tokens fed to the encoder, T_decoder = decoder prompt tokens. Like the usual 6N convention it counts weight gradients
for frozen weights too (they are not computed) and leaves out attention-score FLOPs and checkpoint recomputation.
Peak = 989 TFLOP/s (H100 SXM bf16 dense; pass --peak-tflops for other parts).

    python benchmarks/bench_gpu_training.py [--quick]
"""

import argparse
import importlib.util
import statistics
import sys
import time

# First: _common sets OMP_WAIT_POLICY, which OpenMP reads when torch loads it.
import _common  # noqa: F401
import torch
from _common import QUICK, BenchConfig, build_backbone, print_json, print_table, verdict, wrap_icae
from bench_training_step import ae_example, ours_step

GPU_CONFIG = BenchConfig(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=18,
    num_attention_heads=32,
    vocab_size=32000,
    num_memory_tokens=128,
    mean_compression_rate=4,
    lora_r=128,
    context_length=2048,
)
H100_BF16_DENSE_TFLOPS = 989.0


def build_model(config: BenchConfig, attn_implementation: str):
    """The ICAE on the GPU in bf16, trainable tensors as in training, checkpointed backbone."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            backbone = build_backbone(config, attn_implementation=attn_implementation)
            model = wrap_icae(backbone, config)
    finally:
        torch.set_default_dtype(previous)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith("memory_token_embed")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def parameter_groups(model) -> dict[str, int]:
    head = model.language_model.get_output_embeddings().weight.numel()
    embed = model.language_model.get_input_embeddings().weight.numel()
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    backbone = sum(p.numel() for n, p in model.language_model.named_parameters() if "lora_" not in n)
    return {"body": backbone - head - embed, "head": head, "embed": embed, "lora": lora, "backbone": backbone}


def bench(config: BenchConfig, attn_implementation: str, batch_size: int, warmup: int, steps: int, peak: float) -> dict:
    model = build_model(config, attn_implementation)
    example = {k: v.cuda() for k, v in ae_example(config, config.context_length, batch_size).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        ours_step(model, example)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)

    groups = parameter_groups(model)
    segments = -(-config.context_length // config.segment_capacity)
    encoder_tokens = batch_size * (config.context_length + segments * config.num_memory_tokens)
    decoder_tokens = example["input_ids"].numel()
    body = groups["body"] + groups["lora"]
    flops = 6 * body * (encoder_tokens + decoder_tokens) + 6 * groups["head"] * decoder_tokens
    result = {
        "attn_implementation": attn_implementation,
        "batch_size": batch_size,
        "step_s": seconds,
        "context_tokens_per_s": batch_size * config.context_length / seconds,
        "processed_tokens_per_s": (encoder_tokens + decoder_tokens) / seconds,
        "model_tflops_per_step": flops / 1e12,
        "mfu": flops / seconds / (peak * 1e12),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "parameters": groups,
        "encoder_tokens": encoder_tokens,
        "decoder_tokens": decoder_tokens,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny CPU-benchmark model: a smoke run in seconds")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="bf16 dense peak")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu_training: no CUDA device, skipped")
        print_json("gpu_training", {"skipped": "no CUDA device"})
        return 0
    torch.manual_seed(0)
    config = QUICK if args.quick else GPU_CONFIG
    results, notes = [], []
    for attn in ("sdpa", "flash_attention_2"):
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            notes.append("flash_attention_2 skipped: flash_attn is not importable (pip install flash-attn)")
            continue
        results.append(bench(config, attn, args.batch_size, args.warmup, args.steps, args.peak_tflops))
        torch.cuda.empty_cache()  # the model of one attention backend is gone before the next is built
    rows = [
        [r["attn_implementation"], r["step_s"], f"{r['context_tokens_per_s']:,.0f}",
         f"{r['processed_tokens_per_s']:,.0f}", r["model_tflops_per_step"], f"{100 * r['mfu']:.1f}%",
         r["peak_gpu_memory_gib"]]
        for r in results
    ]
    params = results[0]["parameters"]
    print_table(
        f"bf16 ICAE AE training step on {torch.cuda.get_device_name()}, Llama {config.num_hidden_layers} layers x "
        f"{config.hidden_size} ({params['backbone'] / 1e9:.2f}B backbone, {params['lora'] / 1e6:.1f}M LoRA), batch "
        f"{args.batch_size} x {config.context_length} ctx tok, median of {args.steps} steps; MFU vs "
        f"{args.peak_tflops:g} TFLOP/s",
        rows,
        ["attention", "step s", "context tok/s", "processed tok/s", "model TFLOP/step", "MFU", "peak GiB"],
    )
    for note in notes:
        print(note)
    if len(results) == 2:
        speedup = results[0]["step_s"] / results[1]["step_s"]
        print(f"flash_attention_2 speed-up over sdpa: {speedup:.2f}x ({verdict(speedup >= 1.0)} >= 1.0)")
    print_json("gpu_training", {"quick": args.quick, "config": config.__dict__, "results": results, "notes": notes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
