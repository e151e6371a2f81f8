"""A saved ICAE loads with `trust_remote_code` where `context_compression` cannot be imported."""

import json
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file, save_file


REMOTE_LOAD = textwrap.dedent(
    """
    import sys
    sys.modules["context_compression"] = None  # any import of the package now fails
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForCausalLM

    folder, inputs_path, outputs_path = sys.argv[1:]
    inputs = load_file(inputs_path)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "ICAEForCausalLM"
    with torch.no_grad():
        compressed = model.compress(inputs["context"], inputs["context_mask"])
        logits = model(input_ids=inputs["prompt"], attention_mask=inputs["prompt_mask"], compressed=compressed).logits
        generated = model.generate(input_ids=inputs["prompt"], attention_mask=inputs["prompt_mask"],
                                   compressed=compressed, max_new_tokens=6, do_sample=False)
    save_file({"memory": compressed.memory_embeds, "logits": logits, "generated": generated}, outputs_path)
    """
)


def test_remote_code_load_gives_identical_outputs(icae, contexts, tmp_path):
    model, tokenizer = icae
    ids = torch.tensor([c + [0] * (21 - len(c)) for c in contexts])
    mask = torch.tensor([[1] * len(c) + [0] * (21 - len(c)) for c in contexts])
    with torch.no_grad():
        compressed = model.compress(ids, mask)
        prompt = model.prepare_prompt(tokenizer, "What happened?", compressed=compressed, mode="ft")
        logits = model(**prompt, compressed=compressed).logits
        generated = model.generate(**prompt, compressed=compressed, max_new_tokens=6, do_sample=False)

    folder = tmp_path / "icae"
    model.save_pretrained(folder)
    assert {"model.safetensors", "config.json", "modeling_icae.py", "configuration_icae.py"} <= {
        p.name for p in folder.iterdir()
    }
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_icae.ICAEConfig",
        "AutoModel": "modeling_icae.ICAEForCausalLM",
        "AutoModelForCausalLM": "modeling_icae.ICAEForCausalLM",
    }
    save_file(
        {"context": ids, "context_mask": mask, "prompt": prompt["input_ids"], "prompt_mask": prompt["attention_mask"]},
        tmp_path / "inputs.safetensors",
    )
    script = tmp_path / "remote_load.py"
    script.write_text(REMOTE_LOAD)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(tmp_path / "out.safetensors")
    assert torch.equal(remote["memory"], compressed.memory_embeds)
    assert torch.equal(remote["logits"], logits)
    assert torch.equal(remote["generated"], generated)
