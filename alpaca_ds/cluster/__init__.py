"""Launching at scale and capacity planning: deepspeed launcher commands, hostfiles, SLURM, memory/time/cost."""
