"""Supervised fine-tuning with DeepSpeed: the only importer of deepspeed."""
