"""The architecture `alpaca-ds plan` sizes, without downloading anything: from the recipe's `model.init_config`, a
local model folder's config.json, `--arch` (a preset name or a config.json), or a preset matched by hub id
(presets.py); the model is built on the meta device to count its parameters exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alpaca_ds.cluster.memory import Dims
from alpaca_ds.cluster.presets import ALIASES, ARCHS, PAD_ADDED
from alpaca_ds.common.errors import UserError
from alpaca_ds.train.config import TrainConfig


@dataclass(frozen=True)
class Arch:
    name: str
    source: str
    config: dict
    vocab_size: int
    vocab_note: str
    total_params: int
    largest_layer_params: int
    largest_layer: str
    matmul_params: int  # all but the input embedding (a lookup); with tied embeddings, all

    @property
    def dims(self) -> Dims:
        c = self.config
        return Dims(
            c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"], self.vocab_size
        )


def count_params(config: dict) -> tuple[int, int, str, int]:
    """(total, largest layer, its name, matmul params) of the causal LM built from `config` on the meta device.

    Largest layer as DeepSpeed's model_to_params: the module with the most parameters of its own; shared
    parameters counted once (by identity: meta tensors have no storage to tell them apart).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "torch_dtype")}
    hf_config = AutoConfig.for_model(kwargs.pop("model_type", "llama"), **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest, name = 0, ""
    for module_name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n > largest:
            largest, name = n, module_name
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total, largest, name, total - (0 if tied else embedding.numel())


def resolve_arch(cfg: TrainConfig, arch: str | None = None, dataset_vocab: int | None = None) -> Arch:
    """The architecture the run trains, without downloading anything."""
    if arch is not None:
        if arch.lower() in ARCHS:
            name, source, config = arch.lower(), f"--arch {arch} (preset)", dict(ARCHS[arch.lower()])
        else:
            path = Path(arch)
            path = path / "config.json" if path.is_dir() else path
            if not path.is_file():
                raise UserError(f"--arch {arch}: neither a preset ({', '.join(ARCHS)}) nor a config.json")
            name, source, config = arch, f"--arch {path}", _read_config(path)
    elif cfg.model.init_config is not None:
        name, source = "model.init_config", "the recipe's model.init_config (random init)"
        config = {"model_type": "llama", **cfg.model.init_config}
    else:
        model = cfg.model.name_or_path
        local = Path(model).expanduser() / "config.json"
        if local.is_file():
            name, source, config = model, f"{local}", _read_config(local)
        elif model.lower() in ALIASES:
            name = ALIASES[model.lower()]
            source, config = f"model.name_or_path {model} = preset {name}", dict(ARCHS[name])
        else:
            raise UserError(
                f"model.name_or_path {model!r}: no local config.json and no preset for it; pass its "
                f"architecture with --arch (a preset: {', '.join(ARCHS)}; or a config.json)"
            )
    base_vocab = config["vocab_size"]
    if dataset_vocab is not None:
        vocab, note = dataset_vocab, f"{dataset_vocab:,} from the dataset's tokenizer ({base_vocab:,} in the config)"
    elif name in PAD_ADDED:
        vocab = base_vocab + PAD_ADDED[name]
        note = f"{vocab:,} = {base_vocab:,} + {PAD_ADDED[name]} added ([PAD], as Alpaca adds it)"
    else:
        vocab, note = base_vocab, f"{base_vocab:,} (no dataset to say which tokens it adds)"
    config = {**config, "vocab_size": vocab}
    total, largest, layer, matmul = count_params(config)
    return Arch(name, source, config, vocab, note, total, largest, layer, matmul)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable config.json ({e})") from None
    missing = [
        k
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if k not in config
    ]
    if missing:
        raise UserError(f"{path}: a LLaMA-style config needs {', '.join(missing)}")
    return config
