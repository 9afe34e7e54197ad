"""The streaming builder: manifest, shards, splits, over-length policy, bad input, crashes and rebuilds, URLs."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from alpaca_ds.common.errors import UserError
from alpaca_ds.dataset.shards import MANIFEST, TokenizedDataset
from helpers.data import build_dataset
from helpers.paths import ROOT

SAMPLE = ROOT / "data" / "sample" / "alpaca_sample.json"
# builds whose worker count is not what they test start one tokenizer process instead of build_dataset's two
# (each spawned worker costs ~0.4 CPU-seconds to start); the 2-worker path is the session's sample_dataset, the
# split and URL tests, and test_small_shards compares a 1-worker build with it
ONE = "workers=1"


@pytest.fixture(scope="module")
def records():
    return json.loads(SAMPLE.read_text())


def all_examples(folder: Path, split: str = "train") -> dict[int, tuple[list[int], list[int]]]:
    ds = TokenizedDataset(folder, split)
    return {ds.record_index(i): (ds[i]["input_ids"].tolist(), ds[i]["labels"].tolist()) for i in range(len(ds))}


def test_manifest_counts_and_shards(sample_dataset, records):
    manifest = json.loads((sample_dataset / MANIFEST).read_text())
    ds = TokenizedDataset(sample_dataset)
    ds.verify()
    assert manifest["counts"]["records"] == manifest["counts"]["examples"] == len(ds) == len(records)
    assert manifest["splits"]["train"]["tokens"] == int(ds.lengths.sum())
    assert manifest["splits"]["train"]["label_tokens"] == sum(
        int((ds[i]["labels"] != -100).sum()) for i in range(len(ds))
    )
    assert manifest["tokenizer"]["added_special_tokens"] == {"pad_token": "[PAD]"}
    assert manifest["tokenizer"]["pad_token_id"] == manifest["tokenizer"]["vocab_size"] - 1
    assert manifest["max_length"] == 512 and manifest["template"]["name"] == "alpaca"
    # every example ends in EOS unless truncated, and truncated ones are exactly max_length long
    eos = manifest["tokenizer"]["eos_token_id"]
    ends = [int(ds[i]["input_ids"][-1]) == eos for i in range(len(ds))]
    assert sum(not e for e in ends) == manifest["counts"]["truncated"]
    assert all(ds.lengths[i] == 512 for i in range(len(ds)) if not ends[i])


def test_small_shards_read_back_identically(sample_dataset, tmp_path):
    manifest = build_dataset(tmp_path / "ds", "shard_size=7", ONE)
    assert len(manifest["splits"]["train"]["shards"]) == -(-120 // 7)
    assert all_examples(tmp_path / "ds") == all_examples(sample_dataset)


def test_split_is_deterministic_and_by_content(tmp_path, records):
    a = build_dataset(tmp_path / "a", "val_fraction=0.25")
    b = build_dataset(tmp_path / "b", "val_fraction=0.25")

    def shard_sums(m):
        return [f["sha256"] for s in m["splits"].values() for sh in s["shards"] for f in sh["files"].values()]

    assert shard_sums(a) == shard_sums(b)
    n_val = a["splits"]["validation"]["examples"]
    assert 10 <= n_val <= 50 and n_val + a["splits"]["train"]["examples"] == len(records)
    # the same records land in validation when the file is reordered
    shuffled = tmp_path / "shuffled.jsonl"
    order = np.random.default_rng(0).permutation(len(records))
    shuffled.write_text("".join(json.dumps(records[i]) + "\n" for i in order))
    build_dataset(tmp_path / "c", f"input={shuffled}", "val_fraction=0.25")
    val_a = {records[i]["instruction"] for i in all_examples(tmp_path / "a", "validation")}
    val_c = {records[order[i]]["instruction"] for i in all_examples(tmp_path / "c", "validation")}
    assert val_a == val_c
    # a different seed gives a different split
    build_dataset(tmp_path / "d", "val_fraction=0.25", "split_seed=1")
    assert {records[i]["instruction"] for i in all_examples(tmp_path / "d", "validation")} != val_a


def test_overlength_drop_counts_what_truncate_cuts(tmp_path):
    build_dataset(tmp_path / "keep", "max_length=4096", ONE)
    full_lengths = TokenizedDataset(tmp_path / "keep").lengths
    drop = build_dataset(tmp_path / "drop", "max_length=200", "overlength=drop", ONE)
    trunc = build_dataset(tmp_path / "trunc", "max_length=200", ONE)
    over = int((full_lengths > 200).sum())
    assert over > 0
    assert drop["counts"]["dropped_overlength"] == trunc["counts"]["truncated"] == over
    assert drop["counts"]["examples"] == len(full_lengths) - over
    assert TokenizedDataset(tmp_path / "drop").lengths.max() <= 200


@pytest.mark.parametrize(
    "name, content, where, problem",
    [
        (
            "bad.jsonl",
            '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": }\n',
            ":3",
            "invalid JSON",
        ),
        ("missing.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', ":2", "missing key 'output'"),
        (
            "type.jsonl",
            '{"instruction": "a", "output": "b"}\n{"instruction": "a", "input": null, "output": "b"}\n',
            ":2",
            "'input' must be a string",
        ),
        (
            "list.json",
            '[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 3}]',
            ": record 1",
            "'output' must be a string",
        ),
        ("notobj.json", '[{"instruction": "a", "output": "b"}, ["c"]]', ": record 1", "expected an object"),
        (
            "utf.jsonl",
            b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n',
            ":2",
            "not UTF-8",
        ),
    ],
)
def test_bad_input_names_file_and_place(tmp_path, name, content, where, problem):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError) as e:
        build_dataset(tmp_path / "ds", f"input={path}", ONE)
    assert f"{path}{where}" in str(e.value) and problem in str(e.value) and "--skip-invalid" in str(e.value)
    assert not (tmp_path / "ds" / MANIFEST).exists() and not list((tmp_path / "ds").glob("build-*"))
    manifest = build_dataset(tmp_path / "ds", f"input={path}", "skip_invalid=true", ONE)
    assert manifest["counts"]["invalid_skipped"] == 1
    assert manifest["counts"]["examples"] == manifest["counts"]["records"] - 1 == 1
    assert manifest["invalid_records"][0].startswith(f"{path}{where}")


def test_broken_json_list_cannot_be_skipped(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]')
    with pytest.raises(UserError, match=r"broken.json: record 1: invalid JSON"):
        build_dataset(tmp_path / "ds", f"input={path}", "skip_invalid=true", ONE)


def test_unreadable_or_empty_inputs(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        build_dataset(tmp_path / "ds", f"input={tmp_path / 'absent.json'}")
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(UserError, match="the input is empty"):
        build_dataset(tmp_path / "ds", f"input={tmp_path / 'empty.json'}", ONE)
    (tmp_path / "text.txt").write_text("hello\n")
    with pytest.raises(UserError, match="neither a JSON list"):
        build_dataset(tmp_path / "ds", f"input={tmp_path / 'text.txt'}", ONE)


def test_loader_refuses_missing_manifest_and_other_tokenizer(sample_dataset, tmp_path):
    with pytest.raises(UserError, match=r"no manifest.json .*alpaca-ds data build"):
        TokenizedDataset(tmp_path)
    manifest = json.loads((sample_dataset / MANIFEST).read_text())
    TokenizedDataset(sample_dataset, tokenizer_sha256=manifest["tokenizer"]["sha256"])
    with pytest.raises(UserError, match="built with tokenizer"):
        TokenizedDataset(sample_dataset, tokenizer_sha256="0" * 64)


def test_damaged_shard_is_refused(tmp_path):
    manifest = build_dataset(tmp_path / "ds", ONE)
    ids = tmp_path / "ds" / manifest["splits"]["train"]["shards"][0]["files"]["ids"]["path"]
    data = bytearray(ids.read_bytes())
    data[-1] ^= 0xFF
    ids.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum differs"):
        TokenizedDataset(tmp_path / "ds").verify()
    ids.write_bytes(bytes(data[:-2]))
    with pytest.raises(UserError, match="wrong size"):
        TokenizedDataset(tmp_path / "ds")


def _kill_build_midway(input_path: Path, output: Path, after: float) -> None:
    """Start a build in another process and SIGKILL it `after` seconds into writing its build folder."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); from helpers.data import build_dataset; "
        "build_dataset(__import__('pathlib').Path(sys.argv[1]), 'input=' + sys.argv[2], 'shard_size=500', "
        "'batch_size=64')"
    )
    before = set(output.glob("build-*"))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(output), str(input_path), str(ROOT / "tests")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while set(output.glob("build-*")) == before and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(after)
    assert proc.poll() is None, "the build finished before it could be killed; make the input larger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_build_leaves_no_manifest_and_keeps_previous(tmp_path, records):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps(r) + "\n" for r in records) * 600)  # 72,000 records: several seconds
    out = tmp_path / "ds"
    for after in (0.0, 0.7, 1.5):
        _kill_build_midway(big, out, after)
        assert not (out / MANIFEST).exists(), f"a build killed {after}s in left a manifest"
        with pytest.raises(UserError, match="did not finish"):
            TokenizedDataset(out)
    # a rebuild into the same directory succeeds and clears the debris of killed builds
    build_dataset(out)
    assert len(list(out.glob("build-*"))) == 1
    before = all_examples(out)
    # killing a rebuild leaves the previous complete dataset readable and intact
    _kill_build_midway(big, out, 0.7)
    ds = TokenizedDataset(out)
    ds.verify()
    assert all_examples(out) == before


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_url_input_is_downloaded_and_checked(tmp_path, sample_dataset):
    handler = functools.partial(_QuietHandler, directory=str(SAMPLE.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{SAMPLE.name}"
    cache = tmp_path / "cache"
    try:
        good = hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
        with pytest.raises(UserError, match="sha256 is .* expected"):
            build_dataset(tmp_path / "bad", f"input={url}", "sha256=" + "0" * 64, f"download_dir={cache}")
        assert not list(cache.rglob("*.json")) and not list(cache.rglob("*.part"))
        with pytest.raises(UserError, match="needs its sha256"):
            build_dataset(tmp_path / "bad", f"input={url}", f"download_dir={cache}")
        manifest = build_dataset(tmp_path / "ds", f"input={url}", f"sha256={good}", f"download_dir={cache}")
        assert manifest["source"]["sha256"] == good
        assert all_examples(tmp_path / "ds") == all_examples(sample_dataset)
    finally:
        server.shutdown()
    # cached: a second build needs no server
    build_dataset(tmp_path / "again", f"input={url}", f"sha256={good}", f"download_dir={cache}")
