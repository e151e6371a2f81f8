"""The command line against the library calls it wraps."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from context_compression import CompressedContext
from context_compression.cli import build_parser, main
from context_compression.data import generate_corpus
from context_compression.demo import evaluate_reconstruction
from context_compression.hub import save_pretrained


@pytest.fixture
def saved_icae(icae, tmp_path):
    model, tokenizer = icae
    save_pretrained(model, tokenizer, tmp_path / "icae")
    return tmp_path / "icae"


def test_parser_lists_every_command(capsys):
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert set(subcommands) == {"demo", "train", "evaluate", "compress", "convert", "push"}
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_compress_writes_the_model_memory(saved_icae, tmp_path, capsys):
    text = generate_corpus(1, seed=5)[0][:120]
    (tmp_path / "doc.txt").write_text(text)
    assert main(["compress", "--model", str(saved_icae), "--input", str(tmp_path / "doc.txt"),
                 "--output", str(tmp_path / "doc.safetensors")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = AutoModelForCausalLM.from_pretrained(saved_icae).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_icae)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.compress(ids)
    written = CompressedContext.load(tmp_path / "doc.safetensors")
    torch.testing.assert_close(written.memory_embeds, expected.memory_embeds)
    assert report["context_tokens"] == ids.shape[1] and report["memory_slots"] == int(expected.num_slots[0])


def test_evaluate_prints_the_metric_functions_figures(saved_icae, tmp_path, capsys):
    texts = generate_corpus(3, seed=6)
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert main(["evaluate", "--model", str(saved_icae), "--data", str(tmp_path / "eval.jsonl"),
                 "--max-tokens", "20", "--batch-size", "2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = AutoModelForCausalLM.from_pretrained(saved_icae).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_icae)
    contexts = [ids[:20] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    expected = evaluate_reconstruction(model, tokenizer, contexts, batch_size=2)
    for key in ("bleu", "token_accuracy", "exact_match", "context_tokens", "memory_slots"):
        assert printed[key] == pytest.approx(expected[key])


def test_convert_delegates_to_the_converter(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out
