"""The one validator of a manifest: the JSON, its fields, the tensor tables and the state trees.

Restore, ``spotsafe ls``, ``verify`` and ``inspect`` all read a manifest through
:func:`spotsafe._format.parse_manifest`, which runs everything here, so ``verify`` says a
checkpoint is valid exactly when restore would load it (whether it fits the user's
objects aside). The checks run on the parsed JSON before any object is built or any
buffer allocated, in this order:

1. the JSON itself (:func:`load_json`): strict UTF-8, no ``NaN``/``Infinity`` literals, no
   number longer than :data:`MAX_NUMBER_CHARS`, no float that overflows, nesting bounded
   (the parser's own recursion is caught; the depth is then checked without recursion);
2. every field (:func:`check_body`): types, ranges, counts and names;
3. the tensor tables: dtypes from the allow-list, ``shape x itemsize == nbytes``, offsets
   aligned to :data:`ALIGN` and inside their file, no two tensors overlapping;
4. every state tree: each tag well-formed, each tensor reference in range and of the right
   kind, each numpy scalar within its dtype, so decoding a validated tree cannot fail.

Each failure raises :class:`ManifestError` with one sentence naming the defect; names
taken from the file are shown with ``repr`` so they cannot carry terminal escapes.
"""

from __future__ import annotations

import json
import math
import re
from itertools import pairwise
from typing import Any

from ._layout import ALIGN, DCP_METADATA, MANIFEST, MAX_STEP
from ._schema import (
    FLOAT_MAX,
    INT64,
    MAX_COMPONENTS,
    MAX_CREATED,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_JSON_DEPTH,
    MAX_JSON_NODES,
    MAX_MANIFEST_BYTES,
    MAX_NDIM,
    MAX_NUMBER_CHARS,
    MAX_TENSORS,
    MAX_TOTAL_BYTES,
    MAX_WORLD_SIZE,
    NUMPY_DTYPES,
    SPECIAL_FLOATS,
    TORCH_DTYPES,
    TORCH_VALUE_DTYPES,
    device_ok,
    int_range,
)

_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,=+-]{0,254}$")
_CHECKSUM = re.compile(r"^[0-9a-f]{16}$")
_KINDS = ("stateful", "value", "files")  # files: a framework's own checkpoint files, listed by name
_TAGS = {"$tensor": (), "$ndarray": (), "$tuple": (), "$dict": ("ordered", "meta"), "$float": (),
         "$np": ("v",), "$dtype": (), "$device": ()}


class ManifestError(ValueError):
    """The manifest is unreadable or inconsistent (the message says how)."""


# -- 1. JSON ------------------------------------------------------------------------
def safe_file_name(name: str) -> bool:
    """Whether a checkpoint may hold a file of this name (flat, no path separators, not the manifest)."""
    return bool(_FILE_NAME.match(name)) and name != MANIFEST


def _no_constant(name: str) -> Any:
    raise ManifestError(f"manifest.json holds the literal {name}, which JSON does not allow")


def _int(s: str) -> int:
    if len(s) > MAX_NUMBER_CHARS:
        raise ManifestError(f"manifest.json holds a {len(s)}-digit number; at most {MAX_NUMBER_CHARS} are allowed")
    return int(s)


def _float(s: str) -> float:
    if len(s) > MAX_NUMBER_CHARS:
        raise ManifestError(f"manifest.json holds a {len(s)}-character number; at most {MAX_NUMBER_CHARS} are allowed")
    f = float(s)
    if not math.isfinite(f):
        raise ManifestError(f"manifest.json holds the number {s[:20]}, which overflows a float")
    return f


def load_json(data: bytes | bytearray | memoryview) -> Any:
    """Parse manifest bytes, refusing anything that could exhaust memory, the stack or a float."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest.json is {len(data)} bytes; at most {MAX_MANIFEST_BYTES} are read")
    try:
        text = bytes(data).decode("utf-8")
        doc = json.loads(text, parse_constant=_no_constant, parse_int=_int, parse_float=_float)
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest.json is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest.json is not valid JSON ({e})") from None
    except RecursionError:
        raise ManifestError(f"manifest.json is nested too deeply; at most {MAX_JSON_DEPTH} levels are allowed") from None
    check_document(doc)
    return doc


def check_document(doc: Any) -> None:
    """Bound the nesting depth and the number of values, without recursion."""
    stack: list[tuple[Any, int]] = [(doc, 1)] if isinstance(doc, (dict, list)) else []
    nodes = 1
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        nodes += len(children)
        if nodes > MAX_JSON_NODES:
            raise ManifestError(f"manifest.json holds more than {MAX_JSON_NODES} values")
        for v in children:
            if isinstance(v, (dict, list)):
                if depth >= MAX_JSON_DEPTH:
                    raise ManifestError(f"manifest.json is nested more than {MAX_JSON_DEPTH} levels deep")
                stack.append((v, depth + 1))


# -- 2. fields ----------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need_int(v: Any, what: str, lo: int, hi: int) -> int:
    if not _is_int(v) or not lo <= v <= hi:
        raise ManifestError(f"manifest.json has {what} = {_short(v)}; expected an integer from {lo} to {hi}")
    return v


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ManifestError(msg)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_body(body: dict[str, Any]) -> None:
    """Check every field of a parsed manifest (its own checksum already verified)."""
    _need_int(body.get("step"), "step", 0, MAX_STEP)
    if body.get("epoch") is not None:
        _need_int(body["epoch"], "epoch", *INT64)
    created = body.get("created")
    _need(isinstance(created, (int, float)) and not isinstance(created, bool) and 0 <= created <= MAX_CREATED,
          f"manifest.json has created = {_short(created)}; expected a time in seconds since 1970")
    world = _need_int(body.get("world_size", 1), "world_size", 1, MAX_WORLD_SIZE)
    alg = body.get("checksum_algorithm", "xxh3_64")
    _need(alg == "xxh3_64", f"manifest.json uses checksum algorithm {_short(alg)}; this spotsafe knows xxh3_64")
    versions = body.get("versions", {})
    _need(isinstance(versions, dict) and len(versions) <= 100 and all(isinstance(v, str) for v in versions.values()),
          "manifest.json has versions that are not a small table of names to strings")
    _need(isinstance(body.get("metadata", {}), dict), "manifest.json has metadata that is not an object")

    files = body.get("files")
    _need(isinstance(files, dict), "manifest.json has no files table")
    _need(len(files) <= MAX_FILES, f"manifest.json lists {len(files)} files; at most {MAX_FILES} are allowed")
    total = 0
    for name, f in files.items():
        _need((bool(_FILE_NAME.match(name)) or name == DCP_METADATA) and name != MANIFEST,
              f"manifest.json lists an unsafe file name {name!r}")
        _need(isinstance(f, dict), f"manifest.json has a malformed entry for file {name!r}")
        size = f.get("size")
        _need(_is_int(size) and 0 <= size <= MAX_FILE_BYTES,
              f"manifest.json says file {name!r} is {_short(size)} bytes; a checkpoint file may hold 0 to "
              f"{MAX_FILE_BYTES} (16 TiB)")
        total += size
        _need(isinstance(f.get("checksum"), str) and bool(_CHECKSUM.match(f["checksum"])),
              f"manifest.json has a malformed checksum for file {name!r}")
        _need_int(f.get("rank", 0), f"the rank of file {name!r}", 0, world - 1)
    _need(total <= MAX_TOTAL_BYTES, f"manifest.json lists {total} bytes of files; at most {MAX_TOTAL_BYTES} (64 TiB)")

    comps = body.get("components")
    _need(isinstance(comps, dict), "manifest.json has no components table")
    _need(len(comps) <= MAX_COMPONENTS,
          f"manifest.json lists {len(comps)} components; at most {MAX_COMPONENTS} are allowed")
    count = 0
    for cname, c in comps.items():
        _need(bool(cname), "manifest.json has a component with an empty name")
        _need(isinstance(c, dict), f"manifest.json has a malformed entry for component {cname!r}")
        _need(c.get("kind") in _KINDS, f"component {cname!r} has kind {_short(c.get('kind'))}; expected one of {_KINDS}")
        _need(isinstance(c.get("type"), str) and len(c["type"]) <= 1000, f"component {cname!r} has a malformed type")
        _need("tree" in c, f"component {cname!r} has no state tree")
        tensors = c.get("tensors")
        _need(isinstance(tensors, list), f"component {cname!r} has no tensor table")
        count += len(tensors)
        _need(count <= MAX_TENSORS, f"manifest.json lists more than {MAX_TENSORS} tensors")
        for i, t in enumerate(tensors):
            _check_tensor(cname, i, t)


SHARD_KINDS = ("module", "optimizer")


def check_shards(shards: Any, files: dict[str, Any], world: int) -> None:
    """The ``shards`` index of a multi-rank checkpoint: every chunk inside a listed file.

    ``{"components": {name: "module" | "optimizer"}, "entries": {key: entry}}``, where an
    entry is ``{"bytes": loc}`` (a value torch pickled) or ``{"dtype": d, "size": [...],
    "chunks": [{"offsets": [...], "sizes": [...], **loc}]}`` and ``loc`` is
    ``{"file": f, "offset": o, "length": n}``; a chunk's bytes are its elements in C order.
    """
    _need(isinstance(shards, dict), "manifest.json has a shards index that is not an object")
    comps, entries = shards.get("components"), shards.get("entries")
    _need(isinstance(comps, dict) and len(comps) <= MAX_COMPONENTS
          and all(isinstance(k, str) and k and v in SHARD_KINDS for k, v in comps.items()),
          f"manifest.json's shards index names its components badly; expected names mapped to one of {SHARD_KINDS}")
    _need(isinstance(entries, dict) and len(entries) <= MAX_TENSORS,
          f"manifest.json's shards index has no entries table of at most {MAX_TENSORS} keys")
    _need(isinstance(world, int) and world >= 1, "manifest.json has a shards index but no world size")

    def loc(where: str, d: Any) -> int:
        _need(isinstance(d, dict), f"manifest.json's shard {where} has no location")
        f = files.get(d.get("file"))
        _need(f is not None, f"manifest.json's shard {where} points into {_short(d.get('file'))}, which is not listed")
        off, n = d.get("offset"), d.get("length")
        _need(_is_int(off) and _is_int(n) and off >= 0 and n >= 0 and off + n <= f["size"],
              f"manifest.json's shard {where} lies outside its file ({_short(off)}+{_short(n)} of {f['size']} bytes)")
        return n

    for key, e in entries.items():
        where = repr(key)[:80]
        _need(isinstance(key, str) and bool(key) and isinstance(e, dict), f"manifest.json has a malformed shard {where}")
        if "bytes" in e:
            loc(where, e["bytes"])
            continue
        dtype, size, chunks = e.get("dtype"), e.get("size"), e.get("chunks")
        _need(isinstance(dtype, str) and dtype in TORCH_DTYPES, f"manifest.json's shard {where} has dtype {_short(dtype)}")
        _need(isinstance(size, list) and len(size) <= MAX_NDIM and all(_is_int(d) and 0 <= d <= MAX_FILE_BYTES
                                                                       for d in size),
              f"manifest.json's shard {where} has size {_short(size)}")
        _need(isinstance(chunks, list) and len(chunks) <= MAX_WORLD_SIZE, f"manifest.json's shard {where} has no chunks")
        for c in chunks:
            offs, sizes = c.get("offsets") if isinstance(c, dict) else None, c.get("sizes") if isinstance(c, dict) else None
            _need(isinstance(offs, list) and isinstance(sizes, list) and len(offs) == len(sizes) == len(size)
                  and all(_is_int(o) and _is_int(s) and o >= 0 and s >= 0 and o + s <= d
                          for o, s, d in zip(offs, sizes, size, strict=True)),
                  f"manifest.json's shard {where} has a chunk outside its size {_short(size)}")
            numel = math.prod(sizes)
            _need(loc(where, c) == numel * TORCH_DTYPES[dtype],
                  f"manifest.json's shard {where} has a chunk whose length is not {numel} elements of {dtype}")


def _check_tensor(cname: str, i: int, t: Any) -> None:
    """One tensor-table entry (called once per tensor: messages are built only on failure)."""
    def fail(what: str) -> ManifestError:
        return ManifestError(f"tensor {i} of component {cname!r} {what}")

    if not isinstance(t, dict):
        raise fail("is not an object")
    kind = t.get("kind", "tensor")
    dtype = t.get("dtype")
    if kind == "tensor":
        if not isinstance(dtype, str) or dtype not in TORCH_DTYPES:
            raise fail(f"has unknown tensor dtype {_short(dtype)}")
        itemsize = TORCH_DTYPES[dtype]
    elif kind == "ndarray":
        if not isinstance(dtype, str) or dtype not in NUMPY_DTYPES:
            raise fail(f"has unsupported array dtype {_short(dtype)}")
        itemsize = NUMPY_DTYPES[dtype][1]
    else:
        raise fail(f"has kind {_short(kind)}; expected 'tensor' or 'ndarray'")
    shape = t.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
        raise fail(f"has shape {_short(shape)}; expected at most {MAX_NDIM} non-negative integers")
    numel = extent = 1
    for d in shape:
        numel *= d
        extent *= d or 1
        if extent * itemsize > MAX_FILE_BYTES:
            raise fail(f"has shape {_short(shape)}, larger than any file")
    nbytes, offset = t.get("nbytes"), t.get("offset")
    if not _is_int(nbytes) or nbytes != numel * itemsize:
        raise fail(f"is {_short(nbytes)} bytes, but {numel} elements of {dtype} take {numel * itemsize}")
    if not _is_int(offset) or not 0 <= offset <= MAX_FILE_BYTES or offset % ALIGN:
        raise fail(f"starts at offset {_short(offset)}; offsets are non-negative multiples of {ALIGN}")
    if not isinstance(t.get("file"), str):
        raise fail("names no file")
    device = t.get("device", "cpu")
    if device != "cpu" and not device_ok(device):
        raise fail(f"has unknown device {_short(device)}")


# -- 3. tensor tables ---------------------------------------------------------------
def check_tables(files: dict[str, Any], comps: dict[str, Any]) -> None:
    """Every tensor inside a listed file, and no two tensors sharing a byte."""
    spans: dict[str, list[tuple[int, int, str, int]]] = {}
    for cname, c in comps.items():
        if c["kind"] == "files":  # a framework's files (spotsafe.hf, spotsafe.accelerate): each one listed
            for fname in c["tree"] if isinstance(c["tree"], list) else ():
                _need(fname in files, f"component {cname!r} holds {_short(fname)}, which the manifest does not list")
        for i, t in enumerate(c["tensors"]):
            f = files.get(t["file"])
            _need(f is not None, f"component {cname!r} points into {t['file']!r}, which the manifest does not list")
            end = t["offset"] + t["nbytes"]
            _need(end <= f["size"], f"component {cname!r} has a tensor outside {t['file']!r} "
                                    f"(bytes {t['offset']}..{end} of {f['size']})")
            if t["nbytes"]:
                spans.setdefault(t["file"], []).append((t["offset"], end, cname, i))
    for fname, s in spans.items():
        s.sort()
        for (_, end, c1, i1), (start, _, c2, i2) in pairwise(s):
            _need(start >= end, f"tensor {i1} of component {c1!r} and tensor {i2} of component {c2!r} overlap "
                                f"in {fname!r}")


# -- 4. state trees -----------------------------------------------------------------
def check_tree(cname: str, kind: str, tree: Any, tensors: list[dict[str, Any]]) -> None:
    """Every node of a component's state tree is something :func:`spotsafe._state.decode` rebuilds."""
    def fail(what: str) -> ManifestError:
        return ManifestError(f"the state tree of component {cname!r} {what}")

    if kind == "files":
        if not (isinstance(tree, list) and all(isinstance(n, str) for n in tree) and len(set(tree)) == len(tree)
                and not tensors):
            raise fail("is not a list of distinct file names")
        return
    if kind == "stateful" and not (isinstance(tree, dict)
                                   and (not any(k.startswith("$") for k in tree) or "$dict" in tree)):
        raise fail("is not a state dict")
    containers = (dict, list)
    stack: list[tuple[Any, bool]] = [(tree, False)]  # (node, is it a dict key: must be hashable)
    while stack:
        node, key = stack.pop()
        if not isinstance(node, containers):
            continue  # None, bool, str and numbers (bounded by the JSON parser)
        if isinstance(node, list):
            stack.extend((v, key) for v in node if isinstance(v, containers))
            continue
        tags = [k for k in node if k.startswith("$")]
        if not tags:
            if key:
                raise fail("uses a dict as a dict key")
            stack.extend((v, False) for v in node.values() if isinstance(v, containers))
            continue
        tag = tags[0]
        if len(tags) != 1 or tag not in _TAGS or not all(k == tag or k in _TAGS[tag] for k in node):
            raise fail(f"has a malformed node with keys {_short(sorted(node)[:5])}")
        val = node[tag]
        if tag in ("$tensor", "$ndarray"):
            want = tag[1:]
            if not (_is_int(val) and 0 <= val < len(tensors) and tensors[val].get("kind", "tensor") == want):
                raise fail(f"refers to {want} {_short(val)}, which its tensor table does not hold")
            if key and want == "ndarray":
                raise fail("uses an array as a dict key")
        elif tag == "$tuple":
            if not isinstance(val, list):
                raise fail("has a malformed tuple")
            stack.extend((v, key) for v in val if isinstance(v, containers))
        elif tag == "$dict":
            if key:
                raise fail("uses a dict as a dict key")
            if not (isinstance(val, list) and all(isinstance(p, list) and len(p) == 2 for p in val)):
                raise fail("has a malformed dict (expected a list of key, value pairs)")
            ordered = node.get("ordered", False)
            if not isinstance(ordered, bool):
                raise fail("has a malformed dict flag")
            if "meta" in node and not ordered:
                raise fail("has metadata on a plain dict")
            for k, v in val:
                if isinstance(k, containers):
                    stack.append((k, True))
                if isinstance(v, containers):
                    stack.append((v, False))
            if "meta" in node:
                stack.append((node["meta"], False))
        elif tag == "$float":
            if val not in SPECIAL_FLOATS:
                raise fail(f"has a malformed float {_short(val)}")
        elif tag == "$np":
            _check_np_scalar(f"the state tree of component {cname!r}", val, node.get("v"), "v" in node)
        elif tag == "$dtype":
            if not (isinstance(val, str) and val in TORCH_VALUE_DTYPES):
                raise fail(f"has unknown dtype {_short(val)}")
        elif not device_ok(val):  # $device
            raise fail(f"has unknown device {_short(val)}")


def _check_np_scalar(where: str, dtype: Any, v: Any, present: bool) -> None:
    spec = NUMPY_DTYPES.get(dtype) if isinstance(dtype, str) else None
    _need(spec is not None and present, f"{where} has a numpy scalar of unsupported dtype {_short(dtype)}")
    kind, size = spec
    if kind == "b":
        ok = isinstance(v, bool)
    elif kind in "iu":
        lo, hi = int_range(kind, size)
        ok = _is_int(v) and lo <= v <= hi
    elif kind == "f":
        special = isinstance(v, dict) and list(v) == ["$float"] and v["$float"] in SPECIAL_FLOATS
        ok = special or (isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= FLOAT_MAX[size])
    else:
        ok = False  # complex scalars are never written
    _need(ok, f"{where} has a numpy {dtype} scalar {_short(v)} out of range for its dtype")
