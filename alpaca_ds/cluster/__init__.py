"""Launching at scale and capacity planning.

launch.py          `alpaca-ds launch`: launcher commands, hostfiles, one node / pdsh / no-ssh modes, checks
runner.py          the one runner of DeepSpeed's launcher (process group, logs, stopping leftovers)
plan.py            `alpaca-ds plan`: memory per GPU and engine, fit verdicts, time and cost (make_plan)
plan_table.py      the plan's table for people (what --json prints, laid out)
arch.py            the architecture planned for (recipe, config.json or preset) and its parameter counts
workload.py        the training split's lengths and the run's steps, tokens and FLOPs
memory.py          the memory formulas (full fine-tuning, LoRA, QLoRA; activations)
presets.py         model architectures and GPU models the plan knows
alpaca_lengths.py  Alpaca's token-length distribution for activation estimates
"""
