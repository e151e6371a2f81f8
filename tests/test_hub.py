"""Checkpoints written by `context_compression.hub`: files, model card, and loading without the library."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, RepoUrl
from transformers import AutoModelForCausalLM, pipeline

import context_compression.pipelines.context_compression as pipeline_module
from context_compression import ICAEForCausalLM
from context_compression.data import generate_corpus
from context_compression.hub import push_to_hub, save_pretrained

QUESTIONS = ["Who bought the ropes?", "Where is the harbour?"]


@pytest.fixture(scope="module")
def contexts():
    documents = generate_corpus(2, seed=4)
    return [documents[0][:60], documents[1][:130]]


def test_save_pretrained_writes_a_self_contained_checkpoint(icae, tmp_path):
    model, tokenizer = icae

    save_pretrained(model, tokenizer, tmp_path / "ckpt", card_metadata={"metrics": {"bleu": 0.987654, "note": "ok"}})

    folder = tmp_path / "ckpt"
    names = {path.name for path in folder.iterdir()}
    expected = {"model.safetensors", "config.json", "configuration_icae.py", "modeling_icae.py",
                "context_compression.py", "tokenizer.json", "tokenizer_config.json", "README.md"}
    assert expected <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "context-compression": {"impl": "context_compression.ContextCompressionPipeline", "pt": ["AutoModelForCausalLM"]}
    }
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_icae.ICAEForCausalLM"
    assert (folder / "context_compression.py").read_bytes() == Path(pipeline_module.__file__).read_bytes()
    # Saving leaves the model's config as it was, so a later plain `model.save_pretrained` claims no pipeline file.
    assert "custom_pipelines" not in vars(model.config)

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers"
    assert {"context-compression", "icae", "custom_code"} <= set(card.data.tags)
    assert "https://arxiv.org/abs/2307.06945" in card.text
    assert "**4 memory slots**" in card.text and "**2x compression**" in card.text
    assert "| bleu | 0.9877 |" in card.text and "| note | ok |" in card.text
    assert f'pipeline(model="{folder}", trust_remote_code=True)' in card.text


def test_card_names_the_base_model(tiny_llama_config, tiny_tokenizer, tmp_path):
    AutoModelForCausalLM.from_config(tiny_llama_config).save_pretrained(tmp_path / "base")
    tokenizer = copy.deepcopy(tiny_tokenizer)
    model = ICAEForCausalLM.from_base_model(tmp_path / "base", tokenizer=tokenizer, num_memory_tokens=4, lora_r=4)

    save_pretrained(model, tokenizer, tmp_path / "local")
    local = ModelCard.load(tmp_path / "local" / "README.md")
    assert str(tmp_path / "base") in local.text
    assert local.data.base_model is None  # a local folder is no Hub id

    save_pretrained(model, tokenizer, tmp_path / "hub", card_metadata={"base_model": "HuggingFaceTB/SmolLM2-135M", "license": "apache-2.0"})
    hub = ModelCard.load(tmp_path / "hub" / "README.md")
    assert hub.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert hub.data.license == "apache-2.0"
    assert "https://huggingface.co/HuggingFaceTB/SmolLM2-135M" in hub.text


def test_mismatched_tokenizer_is_not_saved(icae, tiny_tokenizer, tmp_path):
    model, _ = icae
    with pytest.raises(ValueError, match="<MEM>"):
        save_pretrained(model, tiny_tokenizer, tmp_path / "ckpt")


REMOTE_SCRIPT = """
import json, sys
sys.modules["context_compression"] = None  # any import of the library now fails
from transformers import pipeline

contexts, questions = json.loads(sys.argv[2]), json.loads(sys.argv[3])
pipe = pipeline(model=sys.argv[1], trust_remote_code=True)
print(json.dumps({
    "pipeline_module": type(pipe).__module__,
    "model_module": type(pipe.model).__module__,
    "answers": [pipe(c, question=questions[0], max_new_tokens=6) for c in contexts],
    "many": pipe(contexts, questions=questions, max_new_tokens=6, batch_size=2),
    "reconstruction": pipe(contexts[0], mode="reconstruct")["reconstruction"],
}))
"""


def test_remote_code_pipeline_without_the_library(icae, contexts, tmp_path):
    model, tokenizer = icae
    save_pretrained(model, tokenizer, tmp_path / "ckpt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))

    completed = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "ckpt"), json.dumps(contexts), json.dumps(QUESTIONS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    remote = json.loads(completed.stdout.strip().splitlines()[-1])

    assert remote["pipeline_module"].startswith("transformers_modules.")
    assert remote["model_module"].startswith("transformers_modules.")
    local = pipeline("context-compression", model=model, tokenizer=tokenizer)
    assert remote["answers"] == [local(c, question=QUESTIONS[0], max_new_tokens=6) for c in contexts]
    assert remote["many"] == local(contexts, questions=QUESTIONS, max_new_tokens=6)
    assert remote["reconstruction"] == local(contexts[0], mode="reconstruct")["reconstruction"]


class FolderCopyingApi(HfApi):
    """The Hub client with its two network calls replaced: `upload_folder` copies the folder it was given."""

    def __init__(self, destination: Path):
        super().__init__(token=False)
        self.destination = destination
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.destination)
        return "commit"


def test_push_to_hub_uploads_the_saved_folder(icae, tmp_path):
    model, tokenizer = icae
    api = FolderCopyingApi(tmp_path / "uploaded")

    push_to_hub(model, tokenizer, "someone/tiny-icae", private=True, commit_message="first", api=api)

    assert [call[:2] for call in api.calls] == [("create_repo", "someone/tiny-icae"), ("upload_folder", "someone/tiny-icae")]
    assert api.calls[0][2]["private"] is True and api.calls[1][2]["commit_message"] == "first"
    save_pretrained(model, tokenizer, tmp_path / "saved")
    uploaded = {p.name: p.read_bytes() for p in (tmp_path / "uploaded").iterdir()}
    saved = {p.name: p.read_bytes() for p in (tmp_path / "saved").iterdir()}
    assert uploaded.keys() == saved.keys()
    assert {name for name in saved if uploaded[name] != saved[name]} == {"README.md"}
    assert 'pipeline(model="someone/tiny-icae", trust_remote_code=True)' in uploaded["README.md"].decode()
