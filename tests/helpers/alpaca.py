"""Stanford Alpaca's own constants, transcribed from stanford_alpaca/generate_instruction.py: references that stay
independent of the package (the tests compare the package's against them)."""

from __future__ import annotations

# the words Alpaca's generator filters out of generated instructions (whole words, case-insensitive)
# fmt: off
BLACKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot",
    "go to", "video", "audio", "music", "flowchart", "diagram",
]
# fmt: on
