"""
One autoencoding training step (forward + backward) of ours vs the original ICAE's training setup, same weights:

- ours: one backbone copy; the encoder is the backbone with LoRA on, the decoder the same backbone with LoRA off;
  activation checkpointing (non-reentrant, replaying the adapter state) on the backbone.
- original (getao/icae `ICAE` with `train=True`): two copies. Encoder = peft `get_peft_model(backbone, LoRA)`, run
  per segment as a CausalLM with `output_hidden_states=True`; decoder = a separate frozen copy with non-reentrant
  gradient checkpointing.

The AE example is the original's: decoder input = memory placeholders + [AE] + context + [eos], loss on context +
eos. First checks both give the same loss and gradients, then reports unique parameters, peak memory (each variant in
a fresh process: peak RSS minus the RSS after imports) and step time. Targets: peak memory <= 0.7x, time <= 1.0x.

    python benchmarks/bench_training_step.py [--quick]
"""

import argparse
import copy
import math
import sys

# First: _common sets OMP_WAIT_POLICY, which OpenMP reads when torch loads it.
import _common  # noqa: F401
import torch
from _common import (
    DEFAULT,
    QUICK,
    build_backbone,
    current_rss_bytes,
    load_average,
    peak_rss_bytes,
    print_json,
    print_table,
    random_context,
    run_child,
    setup_cpu,
    special_token_ids,
    time_interleaved,
    unique_parameter_count,
    verdict,
    wrap_icae,
)
from peft import LoraConfig, get_peft_model
from torch import nn

MEMORY_TARGET = 0.7
TIME_TARGET = 1.0
EOS_ID = 2
CHECKPOINTING = {"use_reentrant": False}


def ae_example(model_config, context_length: int, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """The original's autoencoding example: placeholders + [AE] + context + [eos], loss on context + eos only."""
    ids = special_token_ids(model_config.vocab_size)
    context = random_context(context_length, model_config.vocab_size, seed=3, batch_size=batch_size)
    slots = math.ceil(context_length / model_config.segment_capacity) * model_config.num_memory_tokens
    prompt = torch.tensor([[ids["memory_token_id"]] * slots + [ids["ae_token_id"]]] * batch_size)
    answer = torch.cat([context, torch.full((batch_size, 1), EOS_ID)], dim=1)
    return {
        "context_input_ids": context,
        "input_ids": torch.cat([prompt, answer], dim=1),
        "labels": torch.cat([torch.full_like(prompt, -100), answer], dim=1),
    }


# ---------------------------------------------------------------------------------------------------- ours


def build_ours(backbone, model_config):
    """The library's ICAE in training mode: only LoRA and the memory embeddings train; checkpointed backbone."""
    model = wrap_icae(backbone, model_config)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith("memory_token_embed")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=CHECKPOINTING)
    return model.train()


def ours_step(model, example) -> torch.Tensor:
    loss = model(**example).loss
    loss.backward()
    return loss


# ---------------------------------------------------------------------------------------------------- original


class OriginalICAE(nn.Module):
    """
    The original training-time ICAE, rebuilt from its description: a peft-wrapped encoder copy, a separate frozen
    decoder copy with non-reentrant gradient checkpointing, and a memory embedding table (memory rows, AE, LM, FT).
    The original also grows both copies' vocabularies by 1 + memory + 3 rows; that is left out (it adds 132 rows
    per table, under 0.5% of this benchmark's parameters).
    """

    def __init__(self, encoder_backbone, decoder, memory_token_embed: nn.Embedding, model_config, lora_r, lora_alpha):
        super().__init__()
        lora = LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
            target_modules=["q_proj", "v_proj"],
        )
        self.icae = get_peft_model(encoder_backbone, lora)
        self.decoder = decoder
        for param in self.decoder.parameters():
            param.requires_grad = False
        self.decoder.activation_checkpointing_enable(activation_checkpointing_kwargs=CHECKPOINTING)
        self.memory_token_embed = memory_token_embed
        self.num_memory_tokens = model_config.num_memory_tokens
        self.capacity = model_config.segment_capacity
        ids = special_token_ids(model_config.vocab_size)
        self.memory_token_id, self.ae_token_id = ids["memory_token_id"], ids["ae_token_id"]

    def compress(self, context: torch.LongTensor) -> torch.Tensor:
        """One CausalLM forward per segment; memory = last hidden state at the memory positions."""
        n = context.shape[1]
        count = math.ceil(n / self.capacity)
        length = math.ceil(n / count)
        embed = self.icae.get_base_model().model.embed_tokens
        memory_rows = self.memory_token_embed.weight[: self.num_memory_tokens].unsqueeze(0)
        slots = []
        for start in range(0, n, length):
            rows = torch.cat([embed(context[:, start : start + length]), memory_rows], dim=1)
            hidden = self.icae(inputs_embeds=rows, output_hidden_states=True).hidden_states[-1]
            slots.append(hidden[0, -self.num_memory_tokens :])
        return torch.cat(slots, dim=0)

    def forward(self, context_input_ids, input_ids, labels) -> torch.Tensor:
        memory = self.compress(context_input_ids)
        placeholders = input_ids == self.memory_token_id
        is_ae = input_ids == self.ae_token_id
        embeds = self.icae.get_base_model().model.embed_tokens(input_ids.masked_fill(placeholders | is_ae, 0))
        embeds = embeds.masked_scatter(placeholders.unsqueeze(-1), memory)
        ae_row = self.memory_token_embed.weight[self.num_memory_tokens]
        embeds = torch.where(is_ae.unsqueeze(-1), ae_row, embeds)
        logits = self.decoder(inputs_embeds=embeds, output_hidden_states=True).logits
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )


def build_original(backbone, model_config, ours=None):
    """Two copies of `backbone`; LoRA and memory embeddings copied from `ours` when given (same weights)."""
    decoder = copy.deepcopy(backbone)
    memory_token_embed = nn.Embedding(model_config.num_memory_tokens + 3, model_config.hidden_size)
    model = OriginalICAE(backbone, decoder, memory_token_embed, model_config, model_config.lora_r, 32)
    if ours is not None:
        with torch.no_grad():
            memory_token_embed.weight.copy_(ours.memory_token_embed.weight)
            params = dict(model.icae.named_parameters())
            for name, param in ours.named_parameters():
                if "lora_" in name:
                    params["base_model.model." + name.removeprefix("language_model.")].copy_(param)
    return model.train()


def original_step(model, example) -> torch.Tensor:
    loss = model(**example)
    loss.backward()
    return loss


# ---------------------------------------------------------------------------------------------------- measurement


def trainable_grads(model, prefix_map) -> dict[str, torch.Tensor]:
    """Gradients of the trainable tensors under common names (`prefix_map` renames a variant's prefixes)."""
    grads = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            for old, new in prefix_map.items():
                name = name.replace(old, new)
            grads[name] = param.grad
    return grads


def check_equivalence(ours, original, example) -> dict:
    """Same weights, same example: the losses and every trainable gradient must agree."""
    for model in (ours, original):
        model.zero_grad(set_to_none=True)
    loss_ours, loss_original = ours_step(ours, example), original_step(original, example)
    grads_ours = trainable_grads(ours, {"language_model.": ""})
    grads_original = trainable_grads(original, {"icae.base_model.model.": ""})
    if set(grads_ours) != set(grads_original):
        raise RuntimeError(f"Trainable tensors differ: {sorted(set(grads_ours) ^ set(grads_original))}")
    difference = max(float((grads_ours[k] - grads_original[k]).abs().max()) for k in grads_ours)
    scale = max(float(g.abs().max()) for g in grads_ours.values())
    return {
        "loss_ours": loss_ours.item(),
        "loss_original": loss_original.item(),
        "max_abs_grad_difference": difference,
        "max_abs_grad": scale,
        "trainable_tensors": len(grads_ours),
    }


def child(variant: str, model_config, context_length: int, steps: int) -> None:
    """Fresh-process peak memory of one variant: build it, run `steps` steps, print RSS figures as JSON."""
    setup_cpu()
    after_imports = current_rss_bytes()
    backbone = build_backbone(model_config)
    if variant == "ours":
        model, step = build_ours(backbone, model_config), ours_step
    else:
        model, step = build_original(backbone, model_config), original_step
    after_build = current_rss_bytes()
    example = ae_example(model_config, context_length)
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        step(model, example)
    print_json(
        "training_step_child",
        {"after_imports": after_imports, "after_build": after_build, "peak": peak_rss_bytes()},
    )


def bench(model_config, context_length: int, repeats: int, quick: bool) -> dict:
    backbone = build_backbone(model_config)
    encoder_copy = copy.deepcopy(backbone)
    ours = build_ours(backbone, model_config)
    original = build_original(encoder_copy, model_config, ours=ours)
    example = ae_example(model_config, context_length)
    equivalence = check_equivalence(ours, original, example)

    def run(model, step):
        model.zero_grad(set_to_none=True)
        step(model, example)

    times = time_interleaved(
        {"ours": lambda: run(ours, ours_step), "original": lambda: run(original, original_step)}, repeats=repeats
    )
    memory = {}
    for variant in ("ours", "original"):
        args = ["--child", variant, "--context-length", str(context_length)] + (["--quick"] if quick else [])
        rss = run_child(__file__, args)
        memory[variant] = {
            "peak_above_imports_bytes": rss["peak"] - rss["after_imports"],
            "weights_bytes": rss["after_build"] - rss["after_imports"],
            "step_peak_above_weights_bytes": rss["peak"] - rss["after_build"],
        }
    return {
        "context_length": context_length,
        "decoder_tokens": example["input_ids"].shape[1],
        "equivalence": equivalence,
        "parameters": {
            "ours": {"unique": unique_parameter_count(ours), "trainable": _trainable(ours)},
            "original": {"unique": unique_parameter_count(original), "trainable": _trainable(original)},
        },
        "memory": memory,
        **times,
        "memory_ratio": memory["ours"]["peak_above_imports_bytes"] / memory["original"]["peak_above_imports_bytes"],
        "time_ratio": times["cpu_s"]["ours"] / times["cpu_s"]["original"],
    }


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def table_rows(r: dict) -> list[list]:
    """Printed rows for one context length: each measure as "ours / original", their ratio, and the target."""
    mib = 2**20
    eq, p, m, wall, cpu = r["equivalence"], r["parameters"], r["memory"], r["wall_s"], r["cpu_s"]

    def pair(ours, original, fmt):
        return f"{ours:{fmt}} / {original:{fmt}}", ours / original

    def memory(key):
        return pair(m["ours"][key] / mib, m["original"][key] / mib, ".0f")

    grads = f"max |grad diff| {eq['max_abs_grad_difference']:.2e} (max |grad| {eq['max_abs_grad']:.2e})"
    params = pair(p["ours"]["unique"], p["original"]["unique"], ",")
    trainable = f"trainable {p['ours']['trainable']:,} / {p['original']['trainable']:,}"
    memory_ok = f"<= {MEMORY_TARGET}: {verdict(r['memory_ratio'] <= MEMORY_TARGET)}"
    time_ok = f"<= {TIME_TARGET}: {verdict(r['time_ratio'] <= TIME_TARGET)}"
    return [
        [f"{r['context_length']} ctx tok, {r['decoder_tokens']} dec tok", "same weights: loss ours / original",
         f"{eq['loss_ours']:.6f} / {eq['loss_original']:.6f}", "", grads],
        ["", "unique parameters", *params, trainable],
        ["", "peak RSS above imports, MiB", *memory("peak_above_imports_bytes"), memory_ok],
        ["", "  of which weights, MiB", *memory("weights_bytes"), ""],
        ["", "  of which step peak, MiB", *memory("step_peak_above_weights_bytes"), ""],
        ["", "step time, wall s", *pair(wall["ours"], wall["original"], ".3g"), ""],
        ["", "step time, cpu s", *pair(cpu["ours"], cpu["original"], ".3g"), time_ok],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (median reported)")
    parser.add_argument(
        "--context-length", type=int, nargs="+", default=None,
        help="one or more lengths; default 2048 (quick: 256). `2048 4096` adds 4096 (about 5 more minutes on 2 cores)",
    )
    parser.add_argument("--child", choices=["ours", "original"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_config = QUICK if args.quick else DEFAULT
    if args.child:
        child(args.child, model_config, args.context_length[0], steps=2)
        return
    setup_cpu()
    lengths = args.context_length or [model_config.context_length]
    results = [bench(model_config, n, args.repeats, args.quick) for n in lengths]

    rows = [row for r in results for row in table_rows(r)]
    print_table(
        f"AE training step, {'QUICK' if args.quick else 'default'} config ({model_config.num_hidden_layers} layers x "
        f"{model_config.hidden_size}, vocab {model_config.vocab_size}, {model_config.num_memory_tokens} slots x rate "
        f"{model_config.mean_compression_rate}, LoRA r {model_config.lora_r}), float32, {torch.get_num_threads()} "
        f"threads, median of {args.repeats} steps, load average {load_average():.1f}; time target uses CPU time",
        rows,
        ["case", "measure", "ours / original", "ratio", "target"],
    )
    first = results[0]
    print_json(
        "training_step",
        {
            "quick": args.quick,
            "config": model_config.__dict__,
            "threads": torch.get_num_threads(),
            "load_average": load_average(),
            "results": results,
            "targets": {
                "memory_ratio": {"value": first["memory_ratio"], "target": f"<= {MEMORY_TARGET}",
                                 "pass": first["memory_ratio"] <= MEMORY_TARGET},
                "time_ratio": {"value": first["time_ratio"], "target": f"<= {TIME_TARGET}",
                               "pass": first["time_ratio"] <= TIME_TARGET},
            },
        },
    )


if __name__ == "__main__":
    sys.exit(main())
