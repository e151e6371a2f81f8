"""`context-compression`: demo, train, evaluate, compress, convert and push from the command line."""

import argparse
import json
import sys

from tqdm.auto import tqdm


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["convert"]:  # the converter parses its own arguments
        from .modeling.icae.convert_icae_original_to_hf import main as convert

        convert(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="context-compression", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    demo = commands.add_parser("demo", help="train a tiny backbone and an ICAE on CPU, measure and save them")
    demo.add_argument("--output-dir", default="out/icae-demo")
    demo.add_argument("--recipe", default="demo", choices=["tiny", "demo", "quality"],
                      help="budget: 'demo' takes a few minutes, 'quality' is the BLEU-4 benchmark run")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=run_demo)

    train = commands.add_parser("train", help="pretrain or instruction-tune an ICAE on a json/jsonl dataset")
    train.add_argument("--base-model", required=True, help="a causal LM (path or Hub id) or an ICAE folder")
    train.add_argument("--data", required=True, help='json/jsonl rows: {"text"} (pretrain) or {"input","prompt","answer"}')
    train.add_argument("--objective", choices=["pretrain", "instruction"], default="pretrain")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--num-memory-tokens", type=int, default=128)
    train.add_argument("--mean-compression-rate", type=int, default=4)
    train.add_argument("--lora-r", type=int, default=128)
    train.add_argument("--max-steps", type=int, default=-1)
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--batch-size", type=int, default=1)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--lm-ratio", type=float, default=0.0)
    train.add_argument("--model-max-length", type=int, default=5120)
    train.add_argument("--bf16", action="store_true")
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser("evaluate", help="autoencoding BLEU-4 and token accuracy of a saved ICAE")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", required=True, help='json/jsonl rows with a "text" field')
    evaluate.add_argument("--max-tokens", type=int, default=None, help="cut each text to this many tokens")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.set_defaults(run=run_evaluate)

    compress = commands.add_parser("compress", help="compress a text file into a .safetensors memory file")
    compress.add_argument("--model", required=True)
    compress.add_argument("--input", required=True, help="a UTF-8 text file")
    compress.add_argument("--output", required=True, help="where to write the CompressedContext")
    compress.set_defaults(run=run_compress)

    commands.add_parser("convert", help="convert an original ICAE v2 checkpoint (see `convert --help`)")

    push = commands.add_parser("push", help="push a saved ICAE folder (with card and code) to the Hub")
    push.add_argument("--model", required=True)
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    push.set_defaults(run=run_push)
    return parser


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import context_compression  # noqa: F401  (registers the ICAE classes)

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.check_tokenizer(tokenizer)
    return model, tokenizer


def _texts(path: str, field: str = "text") -> list[str]:
    from datasets import load_dataset

    rows = load_dataset("json", data_files=path, split="train")
    if field not in rows.column_names:
        raise SystemExit(f"{path} has no {field!r} field (it has {rows.column_names}).")
    return list(rows[field])


def run_demo(args) -> int:
    from .demo import run_demo as demo

    result = demo(args.output_dir, recipe=args.recipe, seed=args.seed)
    print(f"trained: backbone {result.backbone_minutes:.1f} min, ICAE {result.icae_minutes:.1f} min")
    print(f"held-out passages: {len(result.passages)}")
    print(f"context tokens: {result.context_tokens:.1f}   memory slots: {result.memory_slots:.1f}   "
          f"ratio: {result.compression_ratio:.1f}x")
    print(f"BLEU-4: {result.bleu:.4f}   exact-token accuracy: {result.token_accuracy:.4f}   "
          f"exact match: {result.exact_match:.4f}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    print("sample context:       ", tokenizer.decode(result.passages[0]))
    print("sample reconstruction:", tokenizer.decode(result.reconstructions[0]))
    print(f"saved to {result.output_dir} (AutoModelForCausalLM.from_pretrained / pipeline('context-compression'))")
    return 0


def run_train(args) -> int:
    import os

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import ICAEForCausalLM, ICAETrainer, ICAETrainingArguments
    from .data import prepare_instruction_dataset, prepare_pretraining_dataset
    from .hub import save_pretrained

    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    if os.path.isfile(os.path.join(args.base_model, "config.json")) and _is_icae(args.base_model):
        model = AutoModelForCausalLM.from_pretrained(args.base_model)
    else:
        model = ICAEForCausalLM.from_base_model(
            args.base_model, tokenizer=tokenizer, num_memory_tokens=args.num_memory_tokens,
            mean_compression_rate=args.mean_compression_rate, lora_r=args.lora_r,
        )
    training_args = ICAETrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, lm_ratio=args.lm_ratio,
        model_max_length=args.model_max_length, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
        report_to="none", save_strategy="steps", save_steps=500,
    )
    rows = load_dataset("json", data_files=args.data, split="train")
    if args.objective == "pretrain":
        dataset = prepare_pretraining_dataset(rows, tokenizer, model, training_args)
    else:
        dataset = prepare_instruction_dataset(rows, tokenizer, model)
    trainer = ICAETrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    save_pretrained(model, tokenizer, args.output_dir)
    print(f"saved to {args.output_dir}")
    return 0


def _is_icae(folder: str) -> bool:
    import os

    with open(os.path.join(folder, "config.json")) as handle:
        return json.load(handle).get("model_type") == "icae"


def run_evaluate(args) -> int:
    from .demo import evaluate_reconstruction

    model, tokenizer = _load(args.model)
    contexts = [ids[: args.max_tokens] for ids in tokenizer(_texts(args.data), add_special_tokens=False)["input_ids"]]
    contexts = [ids for ids in tqdm(contexts, desc="texts") if ids]
    scores = evaluate_reconstruction(model, tokenizer, contexts, batch_size=args.batch_size)
    scores.pop("reconstructions")
    print(json.dumps(scores))
    return 0


def run_compress(args) -> int:
    import torch

    model, tokenizer = _load(args.model)
    with open(args.input, encoding="utf-8") as handle:
        text = handle.read()
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        compressed = model.compress(ids)
    compressed.save(args.output)
    print(json.dumps({"context_tokens": int(compressed.context_lengths[0]), "memory_slots": int(compressed.num_slots[0]),
                      "output": args.output}))
    return 0


def run_push(args) -> int:
    from .hub import push_to_hub

    model, tokenizer = _load(args.model)
    print(push_to_hub(model, tokenizer, args.repo_id, private=args.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
