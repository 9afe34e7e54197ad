"""Shared helpers: errors, file IO (atomic writes, the fsync'd JSONL journal), downloads, locks, provenance, serving."""
