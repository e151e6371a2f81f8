import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, TrainerCallback

from context_compression import ICAEForCausalLM
from context_compression.trainers import ICAEDataCollator, ICAETrainer


def trainable(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_same_parameters(a, b, **tolerance):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name, **tolerance)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lm_ratio": 1.5}, "lm_ratio"),
        ({"leave_tokens_for_lm": 9, "min_tokens_for_lm": 8}, "leave_tokens_for_lm"),
        ({"min_tokens_for_lm": -1}, "cannot be negative"),
        ({"num_memory_tokens": 0}, "num_memory_tokens"),
        ({"mean_compression_rate": 0}, "mean_compression_rate"),
        ({"model_max_length": 0}, "model_max_length"),
        ({"restore_from": "/nonexistent/icae"}, "does not exist"),
    ],
)
def test_invalid_arguments_are_refused(make_args, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(**overrides)


def test_training_lowers_loss_and_updates_only_encoder_and_memory(new_icae, make_args, pretraining_data):
    model, tokenizer = new_icae()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = make_args(max_steps=12, learning_rate=3e-2, lr_scheduler_type="constant")
    trainer = ICAETrainer(model=model, args=args, train_dataset=pretraining_data, processing_class=tokenizer)
    assert isinstance(trainer.data_collator, ICAEDataCollator)
    initial_loss = trainer.evaluate(pretraining_data)["eval_loss"]
    trainer.train()
    final_loss = trainer.evaluate(pretraining_data)["eval_loss"]
    assert final_loss < initial_loss - 0.01  # a random backbone predicts near-uniformly: small but real gains

    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {name for name in before if "lora_" in name or name.startswith("memory_token_embed.")}
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in trained), name


def test_unfrozen_backbone_trains_everything(new_icae, make_args):
    model, tokenizer = new_icae()
    ICAETrainer(model=model, args=make_args(freeze_backbone=False), processing_class=tokenizer)
    assert all(param.requires_grad for param in model.parameters())


def test_activation_checkpointing_gives_the_same_step(new_icae, make_args, pretraining_data):
    """Plain SGD, so the step is proportional to the gradient: a wrong checkpointed gradient would show."""
    results = []
    for checkpointing in (False, True):
        model, tokenizer = new_icae()
        initial = trainable(model)
        args = make_args(max_steps=1, optim="sgd", learning_rate=1.0, activation_checkpointing=checkpointing)
        ICAETrainer(model=model, args=args, train_dataset=pretraining_data, processing_class=tokenizer).train()
        assert model.is_activation_checkpointing == checkpointing
        results.append(trainable(model))
    assert all(not torch.equal(results[0][name], initial[name]) for name in initial)
    assert_same_parameters(results[1], results[0], atol=1e-5, rtol=1e-4)


def test_gradient_accumulation_equals_a_larger_batch(new_icae, make_args, pretraining_data):
    """The loss is averaged over all target tokens of the accumulated batch, not per micro-batch."""
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model, tokenizer = new_icae()
        args = make_args(
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
        )
        ICAETrainer(model=model, args=args, train_dataset=pretraining_data, processing_class=tokenizer).train()
        results.append(trainable(model))
    assert_same_parameters(results[1], results[0], atol=1e-5, rtol=1e-4)


class StopAt(TrainerCallback):
    """Ends training after `step`, as if the job had been interrupted (the checkpoint at `step` is written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resuming_from_a_checkpoint_reproduces_uninterrupted_training(new_icae, make_args, pretraining_data, tmp_path):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, lm_ratio=0.5)

    model, tokenizer = new_icae()
    args = make_args(output_dir=str(tmp_path / "straight"), **settings)
    ICAETrainer(model=model, args=args, train_dataset=pretraining_data, processing_class=tokenizer).train()
    straight = trainable(model)

    model, tokenizer = new_icae()
    args = make_args(output_dir=str(tmp_path / "interrupted"), **settings)
    trainer = ICAETrainer(model=model, args=args, train_dataset=pretraining_data, processing_class=tokenizer)
    trainer.add_callback(StopAt(3))
    trainer.train()
    assert trainer.state.global_step == 3

    model, tokenizer = new_icae(seed=1)  # different initial weights: the checkpoint must restore everything
    trainer = ICAETrainer(model=model, args=args, train_dataset=pretraining_data, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=str(tmp_path / "interrupted" / "checkpoint-3"))
    assert trainer.state.global_step == 6
    assert_same_parameters(trainable(model), straight)


def test_checkpoints_are_safetensors_of_the_icae(new_icae, make_args, pretraining_data, tmp_path):
    model, tokenizer = new_icae()
    args = make_args(max_steps=2, save_strategy="steps", save_steps=2)
    ICAETrainer(model=model, args=args, train_dataset=pretraining_data, processing_class=tokenizer).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "icae"
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys == set(model.state_dict())
    assert ICAEForCausalLM.from_pretrained(checkpoint).check_tokenizer(tokenizer) is None
    reloaded = ICAEForCausalLM.from_pretrained(checkpoint)
    assert_same_parameters(dict(reloaded.named_parameters()), dict(model.named_parameters()), atol=0, rtol=0)


def test_restore_from_an_icae_folder(new_icae, make_args, pretraining_data, tmp_path):
    saved, tokenizer = new_icae(seed=3)
    saved.save_pretrained(tmp_path / "icae")
    trainer = ICAETrainer(args=make_args(restore_from=str(tmp_path / "icae")), processing_class=tokenizer)
    assert_same_parameters(dict(trainer.model.named_parameters()), dict(saved.named_parameters()), atol=0, rtol=0)
    assert trainer.model.memory_token_embed.weight.requires_grad
    assert not trainer.model.get_input_embeddings().weight.requires_grad

    with pytest.raises(ValueError, match="model=None"):
        ICAETrainer(model=saved, args=make_args(restore_from=str(tmp_path / "icae")))


def test_restore_from_an_original_icae_file(new_icae, make_args, tmp_path):
    """A released-format file (LoRA under `icae.base_model.model.`, memory embeddings) loads into the given model."""
    source, tokenizer = new_icae(seed=3)
    original = {
        name.replace("language_model.", "icae.base_model.model.", 1): param.detach().contiguous()
        for name, param in source.named_parameters()
        if "lora_" in name or name.startswith("memory_token_embed.")
    }
    save_file(original, tmp_path / "icae.safetensors")
    model, _ = new_icae(seed=4)
    trainer = ICAETrainer(
        model=model, args=make_args(restore_from=str(tmp_path / "icae.safetensors")), processing_class=tokenizer
    )
    assert_same_parameters(trainable(trainer.model), trainable(source), atol=0, rtol=0)


def test_wraps_a_base_language_model(tiny_llama_config, tiny_tokenizer, make_args, new_icae, tmp_path):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    base = AutoModelForCausalLM.from_config(tiny_llama_config)
    trainer = ICAETrainer(
        model=base, args=make_args(num_memory_tokens=2, mean_compression_rate=3), processing_class=tokenizer
    )
    assert isinstance(trainer.model, ICAEForCausalLM)
    assert (trainer.model.config.num_memory_tokens, trainer.model.config.mean_compression_rate) == (2, 3)
    assert trainer.model.config.memory_token_id == tokenizer.convert_tokens_to_ids("<MEM>")
    assert trainer.model.language_model is base

    with pytest.raises(ValueError, match="processing_class"):
        ICAETrainer(model=AutoModelForCausalLM.from_config(tiny_llama_config), args=make_args())
    icae, tokenizer = new_icae()
    with pytest.raises(ValueError, match="num_memory_tokens"):
        ICAETrainer(model=icae, args=make_args(num_memory_tokens=8), processing_class=tokenizer)


def test_model_given_as_a_path(tiny_llama_config, tiny_tokenizer, make_args, new_icae, tmp_path):
    """A path to a base LM is wrapped; a path to an ICAE folder is loaded as it is."""
    base = AutoModelForCausalLM.from_config(tiny_llama_config)
    base.save_pretrained(tmp_path / "base")
    tokenizer = copy.deepcopy(tiny_tokenizer)
    wrapped = ICAETrainer(model=str(tmp_path / "base"), args=make_args(), processing_class=tokenizer).model
    assert isinstance(wrapped, ICAEForCausalLM)
    torch.testing.assert_close(wrapped.get_input_embeddings().weight, base.get_input_embeddings().weight)

    icae, tokenizer = new_icae()
    icae.save_pretrained(tmp_path / "icae")
    loaded = ICAETrainer(model=str(tmp_path / "icae"), args=make_args(), processing_class=tokenizer).model
    assert_same_parameters(dict(loaded.named_parameters()), dict(icae.named_parameters()), atol=0, rtol=0)


def test_accepts_the_users_collator(new_icae, make_args, pretraining_data):
    class CountingCollator(ICAEDataCollator):
        calls = 0

        def __call__(self, examples):
            CountingCollator.calls += 1
            return super().__call__(examples)

    model, tokenizer = new_icae()
    collator = CountingCollator(pad_to_multiple_of=8)
    trainer = ICAETrainer(
        model=model,
        args=make_args(max_steps=2),
        train_dataset=pretraining_data,
        data_collator=collator,
        processing_class=tokenizer,
    )
    assert trainer.data_collator is collator
    trainer.train()
    assert CountingCollator.calls >= 2


def _bf16_steps(new_icae, make_args, pretraining_data, **device_args):
    model, tokenizer = new_icae()
    initial = trainable(model)
    trainer = ICAETrainer(
        model=model,
        args=make_args(max_steps=2, bf16=True, **device_args),
        train_dataset=pretraining_data,
        processing_class=tokenizer,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p.cpu(), initial[name]) for name, p in trainable(model).items())


def test_bf16_autocast_on_cpu(new_icae, make_args, pretraining_data):
    """torch autocasts to bfloat16 on CPU too, so `bf16=True` trains there (slowly) rather than being refused."""
    _bf16_steps(new_icae, make_args, pretraining_data)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_and_activation_checkpointing_on_gpu(new_icae, make_args, pretraining_data):
    _bf16_steps(new_icae, make_args, pretraining_data, use_cpu=False, activation_checkpointing=True)
