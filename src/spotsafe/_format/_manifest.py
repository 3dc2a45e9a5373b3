"""The manifest: what a checkpoint holds, and the proof that it is whole.

``manifest.json`` is written last; its presence is the commit point. It lists every file
with its size and xxh3-64 checksum, the components and their tensor tables, the step,
the versions that wrote it and user metadata, and carries a checksum of its own body so
that a flipped byte in the manifest itself is caught even when the JSON still parses.

This module knows no torch: ``spotsafe ls`` / ``verify`` / ``inspect`` read manifests
without importing it.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__
from ..errors import UnsupportedStateError
from ._hash import ALGORITHM, digest_bytes
from ._schema import INT64, MAX_JSON_NODES, MAX_MANIFEST_BYTES, SPECIAL_FLOATS
from ._validate import ManifestError, check_body, check_document, check_shards, check_tables, check_tree, load_json

FORMAT_NAME = "spotsafe-checkpoint"
FORMAT_VERSION = 1
_SELF_SUM = "manifest_checksum"


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    """One file of a checkpoint: its size and content checksum."""

    size: int
    checksum: str
    rank: int = 0


@dataclass(frozen=True, kw_only=True)
class TensorEntry:
    """Where one tensor (or numpy array) lives inside a component file."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    file: str
    kind: str = "tensor"  # "tensor" or "ndarray"
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        out = {"dtype": self.dtype, "shape": list(self.shape), "offset": self.offset,
               "nbytes": self.nbytes, "file": self.file}
        if self.kind != "tensor":
            out["kind"] = self.kind
        if self.device != "cpu":
            out["device"] = self.device
        return out


@dataclass(frozen=True, kw_only=True)
class ComponentEntry:
    """One named entry of the user's state: its encoded tree and its tensor table."""

    kind: str  # "stateful" (has state_dict/load_state_dict), "value", or "files" (tree: a framework's file names)
    type: str
    tree: Any
    tensors: tuple[TensorEntry, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The parsed, self-checked manifest of one checkpoint."""

    step: int
    files: dict[str, FileEntry]
    components: dict[str, ComponentEntry]
    created: float = field(default_factory=time.time)
    epoch: int | None = None
    world_size: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    shards: dict[str, Any] | None = None
    """A multi-rank checkpoint's index of what torch.distributed.checkpoint's planners wrote
    (see :func:`._validate.check_shards`): the state names it holds and, for every flattened
    key, its dtype, global size and chunks with the file, offset and length of each. None for
    a single-process checkpoint."""
    format_version: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json_bytes(self) -> bytes:
        """Serialize, adding the checksum of the body."""
        body = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "step": self.step,
            "epoch": self.epoch,
            "created": self.created,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "world_size": self.world_size,
            "versions": self.versions,
            "checksum_algorithm": ALGORITHM,
            "files": {name: {"size": f.size, "checksum": f.checksum, "rank": f.rank}
                      for name, f in self.files.items()},
            "components": {
                name: {"kind": c.kind, "type": c.type, "tree": c.tree,
                       "tensors": [t.to_json() for t in c.tensors]}
                for name, c in self.components.items()
            },
            "metadata": encode_metadata(self.metadata),
        }
        if self.shards is not None:
            body["shards"] = self.shards
        shards = {} if self.shards is None else {"shards": _SHARDS_JSON.get(self.shards)}
        body[_SELF_SUM] = digest_bytes(_dumps(body, canonical=True, encoded=shards).encode())
        raw = _dumps(body, canonical=False, encoded=shards).encode()  # compact: indent would use the slow encoder
        try:  # never commit a manifest the reader refuses (state trees are otherwise bounded by the encoder)
            if len(raw) > MAX_MANIFEST_BYTES:
                raise ManifestError(f"it would be {len(raw)} bytes, and at most {MAX_MANIFEST_BYTES} are read")
            if len(raw) > MAX_JSON_NODES:  # each value takes a byte at least: only so large a one can hold too many
                check_document(body)
        except ManifestError as e:
            raise UnsupportedStateError(f"The manifest of step {self.step} cannot be written: {e}; keep long lists "
                                        "and strings in the state as tensors or numpy arrays.") from None
        return raw


def default_versions(**extra: str) -> dict[str, str]:
    """spotsafe and python versions, plus any given (the engine adds torch's)."""
    return {"spotsafe": __version__, "python": platform.python_version(), **extra}


METADATA_MAX_DEPTH = 32
METADATA_MAX_BYTES = 1 << 20


def encode_metadata(metadata: Any) -> dict[str, Any]:
    """User metadata as strict JSON: non-finite floats become ``{"$float": "nan"}``.

    Accepts dicts with string keys, lists, tuples (stored as lists), strings, booleans,
    None, ints that fit 64 bits, floats (NaN and infinities included) and numpy scalars
    (stored as Python numbers). Anything else raises at once, naming its key and the
    way out, so that ``save()`` fails in the caller and never later in the background.
    """
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of name -> value, got {type(metadata).__name__}; "
                        "pass e.g. metadata={'loss': loss.item()}.")
    out = _encode_meta(metadata, "metadata", "value", 0)
    size = len(json.dumps(out, allow_nan=False))
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is {size} bytes of JSON, more than the {METADATA_MAX_BYTES} a manifest takes; "
                         "keep large values in the state, not in metadata.")
    return out


def _encode_meta(v: Any, path: str, leaf: str, depth: int) -> Any:
    if depth > METADATA_MAX_DEPTH:
        raise ValueError(f"{path} is nested deeper than {METADATA_MAX_DEPTH} levels; flatten it.")
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        if not INT64[0] <= v <= INT64[1]:
            raise ValueError(f"{path} is an integer of {v.bit_length()} bits; metadata holds 64-bit integers, "
                             "pass it as a string or a float.")
        return int(v)
    if isinstance(v, float):
        v = float(v)
        return v if math.isfinite(v) else {"$float": repr(v)}
    kind = f"{type(v).__module__}.{type(v).__qualname__}"
    if type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0 and getattr(v, "dtype", None) is not None \
            and v.dtype.kind in "biuf":
        return _encode_meta(v.item(), path, leaf, depth)  # a numpy scalar number
    if isinstance(v, dict):
        out = {}
        for k, item in v.items():
            if not isinstance(k, str) or k.startswith("$"):
                raise TypeError(f"{path} has the key {k!r}; metadata keys are strings that do not start with '$'.")
            out[k] = _encode_meta(item, f"{path}[{k!r}]", k if k.isidentifier() else "value", depth + 1)
        return out
    if isinstance(v, (list, tuple)):
        return [_encode_meta(item, f"{path}[{i}]", leaf, depth + 1) for i, item in enumerate(v)]
    if callable(getattr(v, "item", None)) and callable(getattr(v, "tolist", None)):
        raise UnsupportedStateError(f"{path} is a {'torch.Tensor' if kind.startswith('torch.') else kind}, which a "
                                    f"manifest cannot hold; pass {leaf}.item() for one number or {leaf}.tolist().")
    raise UnsupportedStateError(f"{path} is a {kind}, which a manifest cannot hold; pass numbers, strings, "
                                "booleans, None, or lists and dicts of them.")


def decode_metadata(tree: Any) -> dict[str, Any]:
    """The metadata :func:`encode_metadata` wrote (``{"$float": "nan"}`` back to NaN)."""
    if not isinstance(tree, dict):
        raise ManifestError(f"manifest.json has metadata of type {type(tree).__name__}, not an object")
    return {k: _decode_meta(v, 1) for k, v in tree.items()}  # a dict, even one that looks like {"$float": ...}


def _decode_meta(v: Any, depth: int) -> Any:
    if depth > METADATA_MAX_DEPTH:
        raise ManifestError(f"manifest.json has metadata nested deeper than {METADATA_MAX_DEPTH} levels")
    if isinstance(v, dict):
        if len(v) == 1 and v.get("$float") in SPECIAL_FLOATS:
            return float(v["$float"])
        return {k: _decode_meta(item, depth + 1) for k, item in v.items()}
    if isinstance(v, list):
        return [_decode_meta(item, depth + 1) for item in v]
    return v


def _dumps(body: dict[str, Any], *, canonical: bool, encoded: dict[str, tuple[str, str]]) -> str:
    """``json.dumps(body)`` (``canonical``: as :func:`_canonical`), byte for byte, taking the
    values named in ``encoded`` ready encoded ((canonical, plain) JSON) instead of encoding them."""
    sep, colon = (",", ":") if canonical else (", ", ": ")
    items = []
    for k in (sorted(body) if canonical else body):
        v = encoded[k][0 if canonical else 1] if k in encoded else \
            json.dumps(body[k], sort_keys=canonical, separators=(sep, colon), allow_nan=False)
        items.append(json.dumps(k) + colon + v)
    return "{" + sep.join(items) + "}"


class _LastJson:
    """The JSON of the last shards index written: the same from save to save while a job's plan
    holds (the chunks, their files and offsets), and most of a multi-rank manifest's bytes."""

    def __init__(self) -> None:
        self._last: tuple[Any, str, str] | None = None

    def get(self, value: Any) -> tuple[str, str]:
        last = self._last
        if last is not None and last[0] == value:  # compared with a copy: a value changed in place misses
            return last[1], last[2]
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
        plain = json.dumps(value, allow_nan=False)
        self._last = (json.loads(plain), canonical, plain)
        return canonical, plain


_SHARDS_JSON = _LastJson()


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def parse_manifest(data: bytes) -> Manifest:
    """Parse, self-check and validate a manifest; raises :class:`ManifestError` naming the defect.

    Everything a manifest asks for is bounded and checked here (:mod:`._validate`) before
    any object is built, so a manifest that parses can be decoded without error.
    """
    body = load_json(data)
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise ManifestError("manifest.json is not a spotsafe manifest")
    claimed = body.pop(_SELF_SUM, None)
    if claimed != digest_bytes(_canonical(body)):
        raise ManifestError("manifest.json fails its own checksum")
    version = body.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ManifestError(f"manifest.json has format version {str(version)[:20]!r}; this spotsafe reads 1 to "
                            f"{FORMAT_VERSION}, upgrade spotsafe to read it")
    check_body(body)
    check_tables(body["files"], body["components"])
    for name, c in body["components"].items():
        check_tree(name, c["kind"], c["tree"], c["tensors"])
    if body.get("shards") is not None:
        check_shards(body["shards"], body["files"], body.get("world_size", 1))
    files = {n: FileEntry(size=f["size"], checksum=f["checksum"], rank=f.get("rank", 0)) for n, f in body["files"].items()}
    components = {
        name: ComponentEntry(kind=c["kind"], type=c["type"], tree=c["tree"], tensors=tuple(
            TensorEntry(dtype=t["dtype"], shape=tuple(t["shape"]), offset=t["offset"], nbytes=t["nbytes"],
                        file=t["file"], kind=t.get("kind", "tensor"), device=t.get("device", "cpu"))
            for t in c["tensors"]))
        for name, c in body["components"].items()}
    return Manifest(step=body["step"], files=files, components=components, created=float(body["created"]),
                    epoch=body.get("epoch"), world_size=body.get("world_size", 1),
                    versions=dict(body.get("versions", {})), metadata=decode_metadata(body.get("metadata", {})),
                    shards=body.get("shards"), format_version=version)
