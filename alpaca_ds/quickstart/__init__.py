"""The whole pipeline in one offline command, `alpaca-ds quickstart`.

config.py    QuickstartConfig
layout.py    the run directory's paths, each step's stage config, the hand commands
pipeline.py  the steps and their resume
result.py    what a quickstart returns, its summary line
report.py    report.md from the run's own files
"""
