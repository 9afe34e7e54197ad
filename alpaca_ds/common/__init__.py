"""Shared helpers: errors, file IO, downloads, progress."""
