"""
Helpers shared by the benchmark scripts: the benchmark model, timing, peak memory in a fresh process, and output.

Every benchmark compares ratios measured in the same run (ours vs a baseline, interleaved where it can), because the
machines these run on are shared and noisy: an absolute time means little, a same-run ratio means more.
"""

import os

# OpenMP threads that spin while waiting make every op wait for a time slice when another process holds a core (a
# 2-layer forward went from 7 ms to 570 ms on this shared 2-core machine). Passive waiting must be set before torch
# loads OpenMP, so the scripts `import _common` before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from context_compression import ICAEForCausalLM

CPU_THREADS = 2


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run: the backbone, the ICAE settings and the context length."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_memory_tokens: int
    mean_compression_rate: int
    lora_r: int
    context_length: int
    max_position_embeddings: int = 8192

    @property
    def segment_capacity(self) -> int:
        return self.num_memory_tokens * self.mean_compression_rate

    def llama_config(self, **kwargs) -> LlamaConfig:
        return LlamaConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            **kwargs,
        )

    def with_context(self, context_length: int) -> "BenchConfig":
        return BenchConfig(**{**self.__dict__, "context_length": context_length})


# The configuration: a 4-layer, 512-wide Llama with the original ICAE's 128 slots at rate 4.
DEFAULT = BenchConfig(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=4,
    num_attention_heads=8,
    vocab_size=32000,
    num_memory_tokens=128,
    mean_compression_rate=4,
    lora_r=128,
    context_length=2048,
)

# A smoke-test configuration that runs in seconds.
QUICK = BenchConfig(
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=2000,
    num_memory_tokens=16,
    mean_compression_rate=4,
    lora_r=16,
    context_length=256,
)


def setup_cpu() -> None:
    """float32, 2 threads, fixed seed: the conditions every CPU figure in benchmarks/README.md was taken under."""
    torch.set_num_threads(CPU_THREADS)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)


def special_token_ids(vocab_size: int) -> dict[str, int]:
    """Memory placeholder and AE/LM/FT ids just past the backbone's vocabulary, as a tokenizer would add them."""
    names = ("memory_token_id", "ae_token_id", "lm_token_id", "ft_token_id")
    return {name: vocab_size + i for i, name in enumerate(names)}


def build_backbone(config: BenchConfig, seed: int = 0, **llama_kwargs) -> LlamaForCausalLM:
    """A random-init Llama of the benchmark's size."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(config.llama_config(**llama_kwargs)).eval()


def wrap_icae(backbone, config: BenchConfig, lora_dropout: float = 0.0, seed: int = 0) -> ICAEForCausalLM:
    """
    Wrap `backbone` (LoRA injected in place) as an ICAE. LoRA B is drawn at random instead of peft's zeros, so the
    encoder differs from the decoder and a benchmark cannot pass by comparing the backbone with itself.
    """
    model = ICAEForCausalLM.from_base_model(
        backbone,
        num_memory_tokens=config.num_memory_tokens,
        mean_compression_rate=config.mean_compression_rate,
        lora_r=config.lora_r,
        lora_dropout=lora_dropout,
        max_context_length=config.max_position_embeddings,
        **special_token_ids(config.vocab_size),
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator, device="cpu") * 0.02)
    return model.eval()


def build_icae(config: BenchConfig, lora_dropout: float = 0.0, seed: int = 0, **llama_kwargs) -> ICAEForCausalLM:
    """The benchmark model: a random-init Llama wrapped as an ICAE with random LoRA weights."""
    return wrap_icae(build_backbone(config, seed, **llama_kwargs), config, lora_dropout, seed)


def random_context(length: int, vocab_size: int, seed: int = 0, batch_size: int = 1) -> torch.LongTensor:
    """Random ordinary token ids (the special ids sit past the vocabulary, so none is drawn)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (batch_size, length), generator=generator, device="cpu")


def time_interleaved(fns: dict, warmup: int = 1, repeats: int = 3) -> dict[str, dict[str, float]]:
    """
    Median seconds per call of each function, calling them in turn (a, b, a, b, ...) so that a slow spell of the
    shared machine hits every variant alike. Returns `{"wall_s": {name: median}, "cpu_s": {name: median}}`: wall
    clock, and CPU time of this process (all threads), which a neighbour's load inflates far less.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - cpu_start)
            wall[name].append(time.perf_counter() - wall_start)
    return {
        "wall_s": {name: statistics.median(values) for name, values in wall.items()},
        "cpu_s": {name: statistics.median(values) for name, values in cpu.items()},
    }


def load_average() -> float:
    """The machine's 1-minute load average, printed with the figures so a reader can judge the noise."""
    return os.getloadavg()[0]


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line; peak memory needs Linux.")


def current_rss_bytes() -> int:
    """Resident set size of this process now (`VmRSS`)."""
    return _proc_status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """
    Highest resident set size of this process image (`VmHWM`). Not `ru_maxrss`: Linux carries the parent's high-water
    mark into a child across fork + exec, so a child started by a 2.5 GB parent reports at least 2.5 GB.
    """
    return _proc_status_bytes("VmHWM")


def run_child(script: str, args: list[str]) -> dict:
    """
    Run `python script *args` in a fresh interpreter and return the JSON object its last stdout line holds. A fresh
    process per variant keeps one variant's allocations out of another's peak RSS.
    """
    result = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False, env={**os.environ}
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def unique_parameter_count(*modules) -> int:
    """Parameters held by the modules, counting each storage once (tied or shared weights are not double-counted)."""
    seen, total = set(), 0
    for module in modules:
        for param in module.parameters():
            key = (param.untyped_storage().data_ptr(), param.storage_offset(), tuple(param.shape))
            if key not in seen:
                seen.add(key)
                total += param.numel()
    return total


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def print_table(title: str, rows: list[list], header: list[str]) -> None:
    """A plain fixed-width table."""
    cells = [header] + [[_format(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))


def _format(cell) -> str:
    if isinstance(cell, float):
        return f"{cell:.4g}"
    return str(cell)


def print_json(benchmark: str, results: dict) -> None:
    """The machine-readable summary: one JSON line, always the script's last line of output."""
    print(json.dumps({"benchmark": benchmark, **results}, sort_keys=True))
