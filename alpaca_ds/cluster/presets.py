"""What the capacity planner knows without downloading anything: model architectures and GPU models.

Architectures are the `config.json` values of the public checkpoints (LlamaConfig keys); `alpaca-ds plan` builds
the model from them on the meta device to count parameters exactly. `pad_added` is how many tokens Alpaca's
`smart_tokenizer_and_embedding_resize` adds to that model's tokenizer ([PAD] for LLaMA), used when no built
dataset says how many rows the embedding really gets.

GPU memory is what `nvidia-smi` reports as the device total; peak TFLOPS are dense bf16 tensor-core numbers from
NVIDIA's data sheets (no sparsity); the $/GPU-hour are assumed on-demand cloud prices for a rough cost, not
quotes: pass your own with `alpaca-ds plan --usd-per-gpu-hour`.
"""

from __future__ import annotations

from dataclasses import dataclass

_LLAMA1 = dict(
    model_type="llama",
    vocab_size=32000,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    tie_word_embeddings=False,
)
_LLAMA2 = {**_LLAMA1, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
_LLAMA3 = {
    **_LLAMA1,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
}


def llama_sizes(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict:
    """An architecture's sizes, as LlamaConfig keys."""
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
    )


_7B, _13B = llama_sizes(4096, 11008, 32, 32, 32), llama_sizes(5120, 13824, 40, 40, 40)

ARCHS: dict[str, dict] = {
    "llama-7b": {**_LLAMA1, **_7B},
    "llama-13b": {**_LLAMA1, **_13B},
    "llama-30b": {**_LLAMA1, **llama_sizes(6656, 17920, 60, 52, 52)},
    "llama-65b": {**_LLAMA1, **llama_sizes(8192, 22016, 80, 64, 64)},
    "llama-2-7b": {**_LLAMA2, **_7B},
    "llama-2-13b": {**_LLAMA2, **_13B},
    "llama-2-70b": {**_LLAMA2, **llama_sizes(8192, 28672, 80, 64, 8)},
    "llama-3-8b": {**_LLAMA3, **llama_sizes(4096, 14336, 32, 32, 8)},
}
# Tokens Alpaca's resize adds to each preset's tokenizer: LLaMA's has no pad token, so [PAD].
PAD_ADDED = {name: 1 for name in ARCHS}

# Hub ids whose config is one of the presets (lower-cased).
ALIASES = {
    "huggyllama/llama-7b": "llama-7b",
    "huggyllama/llama-13b": "llama-13b",
    "huggyllama/llama-30b": "llama-30b",
    "huggyllama/llama-65b": "llama-65b",
    "decapoda-research/llama-7b-hf": "llama-7b",
    "decapoda-research/llama-13b-hf": "llama-13b",
    "meta-llama/llama-2-7b-hf": "llama-2-7b",
    "meta-llama/llama-2-13b-hf": "llama-2-13b",
    "meta-llama/llama-2-70b-hf": "llama-2-70b",
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/llama-3.1-8b": "llama-3-8b",
}


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: int  # device total as nvidia-smi reports it
    bf16_tflops: float  # dense peak
    usd_per_hour: float  # assumed on-demand price, for a rough cost only

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("RTX4090-24GB", 24564, 165.2, 0.40),  # consumer card alpaca-lora trained on; bf16 with fp32 accumulation
        Gpu("L4-24GB", 23034, 121.0, 0.80),
        Gpu("L40S-48GB", 46068, 362.0, 1.50),
        Gpu("A100-40GB", 40960, 312.0, 1.30),
        Gpu("A100-80GB", 81920, 312.0, 1.80),
        Gpu("H100-80GB", 81559, 989.0, 2.70),  # SXM; the PCIe card below has less compute
        Gpu("H100-PCIe-80GB", 81559, 756.0, 2.40),
        Gpu("H200-141GB", 143771, 989.0, 3.50),
    )
}
