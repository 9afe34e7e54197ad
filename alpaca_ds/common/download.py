"""Download a file once, with a progress bar, and refuse it unless its sha256 matches."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from alpaca_ds.common.errors import UserError


def fetch(url: str, sha256: str | None, cache_dir: str | Path) -> Path:
    """Return a local path holding the content of `url` whose sha256 is `sha256` (cached by that hash)."""
    if not sha256:
        raise UserError(
            f"{url}: a URL input needs its sha256 (set `sha256` in the config) so a changed or "
            "truncated download is never built"
        )
    cache = Path(cache_dir).expanduser() / sha256
    target = cache / (Path(urllib.request.urlparse(url).path).name or "download")
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: download failed: {getattr(e, 'reason', e)}") from None
    if digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise UserError(
            f"{url}: sha256 is {digest.hexdigest()}, expected {sha256}; the file changed or the "
            "download was corrupted. Check the URL, or update `sha256` if you trust the new file."
        )
    os.replace(part, target)
    return target
