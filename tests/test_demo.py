"""A seconds-long demo run: it trains both stages, measures, and saves a folder that reloads."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from context_compression.cli import main
from context_compression.demo import reconstruct, run_demo


def test_tiny_demo_saves_a_model_that_reloads_and_reconstructs_the_same(tmp_path):
    result = run_demo(tmp_path / "demo", recipe="tiny")
    assert result.memory_slots == 4 and result.context_tokens == 16 and result.compression_ratio == 4
    assert 0.0 <= result.bleu <= 1.0 and 0.0 <= result.token_accuracy <= 1.0
    model = AutoModelForCausalLM.from_pretrained(result.output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    assert reconstruct(model, tokenizer, result.passages) == result.reconstructions
    pipe = pipeline("context-compression", model=model, tokenizer=tokenizer)
    out = pipe(tokenizer.decode(result.passages[0]), mode="reconstruct")
    assert out["memory_slots"] == 4


def test_demo_command_prints_the_figures(tmp_path, capsys):
    assert main(["demo", "--recipe", "tiny", "--output-dir", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    for label in ("context tokens:", "memory slots:", "BLEU-4:", "exact-token accuracy:", "sample reconstruction:"):
        assert label in printed


def test_unknown_recipe_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown demo recipe 'huge'"):
        run_demo(tmp_path, recipe="huge")
