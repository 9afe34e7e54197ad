"""Shared helpers, no stage logic.

errors.py      UserError: a message for the user, not a traceback
io.py          atomic writes, checksums, reading a YAML mapping
jsonfile.py    the one reader of JSON-list and JSONL files
journal.py     the fsync'd append-only JSONL journal (group commit, torn-tail repair)
lock.py        one run per output directory (filelock)
download.py    sha256-checked downloads
provenance.py  the provenance chain between stages
serving.py     small aiohttp helpers for the local pages and APIs; free_port
"""
