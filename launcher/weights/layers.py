"""Image layers any registry accepts: weight files over the layer cap are stored in pieces of at most the cap.

Several registries refuse a layer over about 10 GB (GitHub's among them), while a Wan 14B DiT is 28.6 GB and
the T5 encoder 11.4 GB. A file over the cap is stored in one of two ways, chosen by who reads it:
- DiT files (`shardable` in the lock) become safetensors shards `<stem>-0000K-of-0000N.safetensors`. musubi-tuner
  loads every shard when given the first one (utils/safetensors_utils.get_split_weight_filenames, called by
  utils/lora_utils.load_safetensors_with_lora_and_fp8, which the Wan loader and all training/caching scripts use;
  detect_wan_sd_dtype opens only the first shard, so that shard must hold block 0), and so does our Lightning
  merge. The plan points at the first shard; nothing is copied at start.
- Any other file (the T5 `.pth`, which musubi reads with torch.load) is cut into byte parts
  `<path>.part-0000K-of-0000N`, joined once into the cache volume at the first start (verified by sha256, reused).
Each shard or part is built from one HTTP Range request for exactly its bytes, so a build never holds a file
twice; shards are contiguous runs of the original's data, so the original header (kept in the image) followed
by every piece's data is the original file byte for byte, and `verify` checks the locked sha256 across them.

Standard library only (plus fetch.py beside it): the Dockerfile copies both before any other project code.

  python layers.py slot --index K --lock LOCK --flavor full --tasks all --max-layer-bytes N --dest /weights
  python layers.py verify --lock LOCK --flavor full --tasks all --max-layer-bytes N --dest /weights --out LAYOUT
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

try:
    from launcher.weights import fetch
except ImportError:  # in the image's weight layers, beside fetch.py, before the package is installed
    import fetch  # type: ignore[no-redef]

MAX_SLOTS = 40  # weight layers in images/Dockerfile: one `layers.py slot --index K` line per slot
LAYER_OVERHEAD = 64 << 10  # per layer: tar headers, verification stamps
HEADERS_DIR = "source-headers"  # under <dest>/.lora-gym/: each sharded file's original safetensors header
# A key whose dtype musubi's detect_wan_sd_dtype reads from the first shard (1.3B and 14B spellings).
DTYPE_KEYS = ("model.diffusion_model.blocks.0.cross_attn.k.weight", "blocks.0.cross_attn.k.weight")


class LayerError(Exception):
    """A lock that cannot be laid out under the cap, or pieces that do not add up; one line for the user."""


@dataclass(frozen=True)
class Piece:
    name: str  # the file under the weights folder
    start: int  # the byte range of the original file whose bytes this piece holds (after its own header)
    end: int
    header: bytes = b""  # a shard's own length-prefixed safetensors header

    @property
    def size(self) -> int:
        return len(self.header) + self.end - self.start


@dataclass(frozen=True)
class Stored:
    entry: dict
    storage: str  # "whole", "shards" or "parts"
    pieces: tuple[Piece, ...]
    source_header: bytes = b""  # shards: the original's header, which with the pieces' data is the original


def split_name(path: str, index: int, count: int, storage: str) -> str:
    if storage == "shards":
        return f"{path.removesuffix('.safetensors')}-{index:05d}-of-{count:05d}.safetensors"
    return f"{path}.part-{index:05d}-of-{count:05d}"


# --- the layout: a pure function of the lock, the cap and the DiTs' headers --------------------------------

def _shard_groups(tensors: list[tuple[str, dict]], budget: int, overhead: int) -> list[list[tuple[str, dict]]]:
    groups: list[list] = [[]]
    for name, info in tensors:
        size = info["data_offsets"][1] - info["data_offsets"][0]
        if size + overhead > budget:
            raise LayerError(f"tensor {name} alone is {size / 1e9:.2f} GB, over the layer cap: raise MAX_LAYER_GB")
        used = sum(i["data_offsets"][1] - i["data_offsets"][0] for _, i in groups[-1])
        if groups[-1] and used + size + overhead > budget:
            groups.append([])
        groups[-1].append((name, info))
    return groups


def _shard_header(group: list[tuple[str, dict]], metadata: dict | None) -> tuple[bytes, int]:
    """The shard's length-prefixed header (offsets rebased to its first tensor), and that first offset."""
    base = group[0][1]["data_offsets"][0]
    header: dict = {"__metadata__": metadata} if metadata else {}
    for name, info in group:
        start, end = info["data_offsets"]
        header[name] = {**info, "data_offsets": [start - base, end - base]}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the 8-byte alignment the safetensors library writes
    return struct.pack("<Q", len(blob)) + blob, base


def shard(entry: dict, source_header: bytes, budget: int) -> Stored:
    """Safetensors shards of one file, each a contiguous run of its tensors in file order."""
    doc = json.loads(source_header[8:])
    metadata = doc.pop("__metadata__", None)
    tensors = sorted(doc.items(), key=lambda item: item[1]["data_offsets"][0])
    overhead = len(source_header)  # a shard's header is never longer than the whole file's
    groups = _shard_groups(tensors, budget, overhead)
    data_start, pieces = len(source_header), []
    for index, group in enumerate(groups, 1):
        header, base = _shard_header(group, metadata)
        last = entry["size"] - data_start if index == len(groups) else groups[index][0][1]["data_offsets"][0]
        pieces.append(Piece(split_name(f"{entry['repo']}/{entry['path']}", index, len(groups), "shards"),
                            data_start + base, data_start + last, header))
    if not any(key in dict(groups[0]) for key in DTYPE_KEYS) and any(key in doc for key in DTYPE_KEYS):
        raise LayerError(f"{fetch.entry_name(entry)}: block 0 would not be in the first shard, where musubi-tuner "
                         "reads the DiT's dtype: raise MAX_LAYER_GB")
    return Stored(entry, "shards", tuple(pieces), source_header)


def cut(entry: dict, budget: int) -> Stored:
    size, name = entry["size"], f"{entry['repo']}/{entry['path']}"
    count = -(-size // budget)
    ranges = [(i * budget, min(size, (i + 1) * budget)) for i in range(count)]
    return Stored(entry, "parts", tuple(Piece(split_name(name, i, count, "parts"), a, b)
                                        for i, (a, b) in enumerate(ranges, 1)))


def budget_of(max_layer_bytes: int) -> int:
    budget = max_layer_bytes - LAYER_OVERHEAD
    if budget < 1 << 20:
        raise LayerError(f"a layer cap of {max_layer_bytes} bytes is too small: use at least 2 MB")
    return budget


def baked(entries: list[dict], flavor: str, tasks: set[str]) -> list[dict]:
    """The weight files a build bakes, in the lock's order."""
    if flavor == "slim":
        return []
    return [e for e in entries if e["kind"] == "weight" and fetch.wanted(e, tasks)]


def needs_header(entry: dict, max_layer_bytes: int) -> bool:
    return entry["size"] > budget_of(max_layer_bytes) and bool(entry.get("shardable"))


def layout(entries: list[dict], max_layer_bytes: int, headers: dict[str, bytes]) -> list[Stored]:
    """How each baked file is stored; `headers` holds the original header of each file to shard."""
    budget, result = budget_of(max_layer_bytes), []
    for entry in entries:
        name = f"{entry['repo']}/{entry['path']}"
        if entry["size"] <= budget:
            result.append(Stored(entry, "whole", (Piece(name, 0, entry["size"]),)))
        elif needs_header(entry, max_layer_bytes):
            result.append(shard(entry, headers[fetch.entry_name(entry)], budget))
        else:
            result.append(cut(entry, budget))
    return result


def slots(stored: list[Stored], max_layer_bytes: int) -> list[list[tuple[Stored, Piece]]]:
    """Pieces packed in order into layers of at most the cap (small files share one)."""
    budget, packed = budget_of(max_layer_bytes), [[]]
    for item in stored:
        for piece in item.pieces:
            if packed[-1] and sum(p.size for _, p in packed[-1]) + piece.size > budget:
                packed.append([])
            packed[-1].append((item, piece))
    packed = [slot for slot in packed if slot]
    if len(packed) > MAX_SLOTS:
        raise LayerError(f"the weights need {len(packed)} layers under a {max_layer_bytes / 1e9:g} GB cap, but "
                         f"images/Dockerfile has {MAX_SLOTS}: raise MAX_LAYER_GB")
    return packed


def document(stored: list[Stored], max_layer_bytes: int) -> dict:
    """The layout file the image carries: how to find each locked file among the pieces."""
    return {"max_layer_bytes": max_layer_bytes,
            "files": {fetch.entry_name(s.entry): {"storage": s.storage, "size": s.entry["size"],
                                                  "sha256": s.entry["sha256"],
                                                  "pieces": [p.name for p in s.pieces]} for s in stored}}


# --- bytes: Range downloads, pieces, verification -----------------------------------------------------------

class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # followed by hand, so the token never leaves the Hub's host
        return None


def _open_range(entry: dict, start: int, end: int, endpoint: str | None, token: str | None):
    """A response streaming bytes [start, end) of the locked file at its locked commit."""
    base = (endpoint or "https://huggingface.co").rstrip("/")
    url = f"{base}/{entry['repo']}/resolve/{entry['revision']}/{urllib.parse.quote(entry['path'])}"
    hub_host = urllib.parse.urlsplit(base).netloc
    opener = urllib.request.build_opener(_KeepRedirects)
    for _ in range(10):
        headers = {"Range": f"bytes={start}-{end - 1}", "User-Agent": "lora-gym-build"}
        if token and urllib.parse.urlsplit(url).netloc == hub_host:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = opener.open(urllib.request.Request(url, headers=headers), timeout=120)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                url = urllib.parse.urljoin(url, exc.headers["Location"])
                continue
            raise
        if response.status != 206:
            raise fetch.FetchError(f"{fetch.entry_name(entry)}: the server ignored the byte range request")
        return response
    raise fetch.FetchError(f"{fetch.entry_name(entry)}: too many redirects")


def _read_range(entry: dict, start: int, end: int, endpoint, token) -> bytes:
    with _open_range(entry, start, end, endpoint, token) as response:
        data = response.read()
    if len(data) != end - start:
        raise fetch.FetchError(f"{fetch.entry_name(entry)}: got {len(data)} of bytes {start}-{end - 1}")
    return data


def remote_header(entry: dict, endpoint, token) -> bytes:
    """The safetensors header of a locked file, length prefix included, from two small Range requests."""
    (length,) = struct.unpack("<Q", _read_range(entry, 0, 8, endpoint, token))
    if length > min(100 << 20, entry["size"] - 8):
        raise LayerError(f"{fetch.entry_name(entry)} is locked as shardable but is not a safetensors file")
    return _read_range(entry, 0, 8 + length, endpoint, token)


def _header_path(dest: Path, entry: dict) -> Path:
    return dest / fetch.STATE_DIR / HEADERS_DIR / entry["repo"] / (entry["path"] + ".header")


def headers_from_hub(entries, max_layer_bytes: int, endpoint, token) -> dict[str, bytes]:
    return {fetch.entry_name(e): remote_header(e, endpoint, token) for e in entries
            if needs_header(e, max_layer_bytes)}


def headers_from_disk(entries, max_layer_bytes: int, dest: Path) -> dict[str, bytes]:
    found = {}
    for entry in (e for e in entries if needs_header(e, max_layer_bytes)):
        path = _header_path(dest, entry)
        if not path.is_file():
            raise LayerError(f"{path} is missing: the layer holding the first shard of {fetch.entry_name(entry)} "
                             "was not built")
        found[fetch.entry_name(entry)] = path.read_bytes()
    return found


def _write_piece(item: Stored, piece: Piece, dest: Path, endpoint, token) -> None:
    final = dest / piece.name
    if final.is_file() and final.stat().st_size == piece.size:
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    if have < len(piece.header) or have > piece.size:  # resume only past our own header
        partial.write_bytes(piece.header)
        have = len(piece.header)
    offset = piece.start + have - len(piece.header)
    if offset < piece.end:
        with _open_range(item.entry, offset, piece.end, endpoint, token) as response, open(partial, "ab") as out:
            while chunk := response.read(8 << 20):
                out.write(chunk)
    if partial.stat().st_size != piece.size:
        raise fetch.FetchError(f"{piece.name}: the download ended early: run the build again to resume")
    os.replace(partial, final)
    if item.storage == "shards" and piece is item.pieces[0]:
        header = _header_path(dest, item.entry)
        header.parent.mkdir(parents=True, exist_ok=True)
        header.write_bytes(item.source_header)


def build_slot(entries, index: int, max_layer_bytes: int, dest: Path, endpoint, token, log=print) -> None:
    """Write the pieces of layer `index` into `dest` (one Dockerfile RUN: one layer)."""
    packed = slots(layout(entries, max_layer_bytes, headers_from_hub(entries, max_layer_bytes, endpoint, token)),
                   max_layer_bytes)
    if index >= len(packed):
        log(f"weights layer {index}: empty (the weights fill {len(packed)} layers)")
        return
    for item, piece in packed[index]:
        if item.storage == "whole":
            fetch.fetch_entry(item.entry, dest, "", endpoint, token)  # downloads and verifies the sha256
        else:
            _write_piece(item, piece, dest, endpoint, token)
        log(f"weights layer {index}: {piece.name} ({fetch.gb(piece.size)})")


def _hash_pieces(item: Stored, dest: Path) -> str:
    digest = hashlib.sha256(item.source_header)
    for piece in item.pieces:
        path = dest / piece.name
        if not path.is_file() or path.stat().st_size != piece.size:
            raise LayerError(f"{path} is missing or has the wrong size: rebuild the image")
        with open(path, "rb") as handle:
            if handle.read(len(piece.header)) != piece.header:
                raise LayerError(f"{path} does not have the shard header this lock and cap give: rebuild the image")
            while chunk := handle.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def verify(entries, max_layer_bytes: int, dest: Path) -> dict:
    """Check every baked file across its pieces against the lock; the layout document when all match."""
    stored = layout(entries, max_layer_bytes, headers_from_disk(entries, max_layer_bytes, dest))
    slots(stored, max_layer_bytes)
    for item in stored:
        if item.storage == "whole":
            if not fetch.is_verified(dest / item.pieces[0].name, item.entry, dest):
                raise LayerError(f"{item.pieces[0].name} does not match the lock: rebuild the image")
        elif _hash_pieces(item, dest) != item.entry["sha256"]:
            raise LayerError(f"{fetch.entry_name(item.entry)}: its {item.storage} do not add up to the locked "
                             "sha256: rebuild the image")
    return document(stored, max_layer_bytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layers.py", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("slot", "verify"))
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--lock", required=True)
    parser.add_argument("--flavor", choices=("full", "slim"), required=True)
    parser.add_argument("--tasks", default="all")
    parser.add_argument("--max-layer-bytes", type=int, required=True)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="verify: where to write the layout document")
    args, token = parser.parse_args(argv), None
    try:
        token = fetch.read_token()
        entries = baked(fetch.load_lock(args.lock), args.flavor, fetch.parse_tasks(args.tasks))
        if args.command == "slot":
            build_slot(entries, args.index, args.max_layer_bytes, args.dest, fetch.read_endpoint(), token)
            return 0
        doc = verify(entries, args.max_layer_bytes, args.dest)
        if args.out:
            args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"weights: {len(doc['files'])} files verified across their layers")
        return 0
    except Exception as exc:  # one line, never a traceback, never the token
        print(f"error: {fetch.one_line(exc, token)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
