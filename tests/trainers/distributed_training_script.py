"""A few ICAE training steps, run by `accelerate launch` / `torchrun` from test_distributed.py.

Every rank writes its trainable parameters before and after training, and rank 0 the loss log, to `argv[1]`; the
test compares them. The ranks see different rows, so identical final parameters mean gradients were synchronised.
"""

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from context_compression import ICAEForCausalLM
from context_compression.data import build_tokenizer, generate_corpus
from context_compression.data.pretrain import prepare_pretraining_dataset
from context_compression.trainers import ICAETrainer, ICAETrainingArguments


def main(out: Path) -> None:
    torch.manual_seed(0)
    tokenizer = build_tokenizer(generate_corpus(200), vocab_size=512)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=37,
        max_position_embeddings=512,
    )
    model = ICAEForCausalLM.from_base_model(
        AutoModelForCausalLM.from_config(config),
        tokenizer=tokenizer,
        num_memory_tokens=4,
        mean_compression_rate=4,
        lora_r=8,
        lora_dropout=0.0,
    )
    args = ICAETrainingArguments(
        output_dir=str(out / "run"),
        use_cpu=True,
        max_steps=8,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        model_max_length=32,
        lm_ratio=0.5,
        min_tokens_for_lm=8,
        leave_tokens_for_lm=2,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    dataset = prepare_pretraining_dataset(
        Dataset.from_dict({"text": generate_corpus(8, seed=1)}), tokenizer, model, args
    )
    trainer = ICAETrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    rank = trainer.accelerator.process_index
    trainable = lambda: {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    save_file(trainable(), out / f"initial-{rank}.safetensors")
    trainer.train()
    save_file(trainable(), out / f"final-{rank}.safetensors")
    if rank == 0:
        log = {
            "world_size": trainer.accelerator.num_processes,
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        }
        (out / "log.json").write_text(json.dumps(log))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
