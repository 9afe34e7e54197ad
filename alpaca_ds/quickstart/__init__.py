"""The whole pipeline in one offline command, `alpaca-ds quickstart`.

config.py    QuickstartConfig: per step, overrides of that stage's own config; the keys the quickstart owns
layout.py    the run directory's paths, each step's stage config, the hand commands
state.py     RUN/quickstart.json: the settings a run is held to and the steps it has finished
pipeline.py  the steps and their resume
result.py    what a quickstart returns, its summary line
report.py    report.md from the run's own files
"""
