"""Supervised fine-tuning with DeepSpeed: the only importer of deepspeed.

config.py     TrainConfig and its sections (model, lora, data, batch, optim, checkpoint, log)
ds_config.py  the DeepSpeed config from the recipe and a ds_configs/ engine file
model.py      the model (pretrained or random init, resized embeddings); lora.py its LoRA/QLoRA adapters
loop.py       the training loop, top to bottom: setup -> loop -> save
__main__.py   `python -m alpaca_ds.train --config ...`: what each rank runs under the deepspeed launcher
checkpoint.py checkpoints and the `latest` pointer
metrics.py    metrics.jsonl and the loss curve
export.py     the verified Hugging Face export (full, merged or adapter)
"""
