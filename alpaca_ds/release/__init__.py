"""Release assets with provenance.

weights.py  weight diffs and their recovery, bit-identical
cards.py    model and data cards; the release folder (`release pack`), LoRA adapters included
result.py   what diff, recover and card return, with their summary lines
"""
