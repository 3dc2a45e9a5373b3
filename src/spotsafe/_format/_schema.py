"""What a manifest may ask for: the allow-lists and bounds the validator enforces (no torch).

A manifest is read from a directory or a bucket that anyone with write access can
change, so every value that decides an allocation, a dtype, a shape or a code path is
checked against these before anything is allocated. The writer keeps within the same
bounds (the state encoder refuses what the reader would refuse), so every checkpoint
spotsafe writes is one it can read back.

The dtype lists are the single source for both sides: :mod:`spotsafe._state._tree` maps
only these names to torch and numpy dtypes.
"""

from __future__ import annotations

import re

# -- sizes and counts ---------------------------------------------------------------
MAX_MANIFEST_BYTES = 128 << 20  # a manifest larger than this is not parsed
MAX_JSON_DEPTH = 200  # nesting of the whole manifest document
MAX_NUMBER_CHARS = 100  # digits (and sign, point, exponent) of one JSON number
MAX_JSON_NODES = 10_000_000  # values in the whole document
MAX_FILES = 100_000
MAX_COMPONENTS = 10_000
MAX_TENSORS = 4_000_000  # tensor-table entries, all components together
MAX_NDIM = 64
MAX_FILE_BYTES = 1 << 44  # 16 TiB: one file of a checkpoint
MAX_TOTAL_BYTES = 1 << 46  # 64 TiB: all files of a checkpoint
MAX_WORLD_SIZE = 1 << 20
MAX_STATE_DEPTH = 50  # containers inside containers in one state (the writer's bound)
MAX_CREATED = 253402300799.0  # 9999-12-31T23:59:59Z: any later time cannot be printed

# -- tensors ------------------------------------------------------------------------
# torch dtypes a tensor may be stored as: name (str(dtype) without "torch.") -> item size.
TORCH_DTYPES: dict[str, int] = {
    "bool": 1, "uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint16": 2, "uint32": 4, "uint64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
    "complex32": 4, "complex64": 8, "complex128": 16,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
}
# torch dtypes that may appear as values in a state (``{"$dtype": name}``), not as storage.
TORCH_VALUE_DTYPES: frozenset[str] = frozenset(TORCH_DTYPES) | {
    "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
    "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    *(f"int{i}" for i in range(1, 8)), *(f"uint{i}" for i in range(1, 8)),
}


def _numpy_dtypes() -> dict[str, tuple[str, int]]:
    out = {"|b1": ("b", 1), "|i1": ("i", 1), "|u1": ("u", 1)}
    for order in "<>":
        for kind, sizes in (("i", (2, 4, 8)), ("u", (2, 4, 8)), ("f", (2, 4, 8)), ("c", (8, 16))):
            for size in sizes:
                out[f"{order}{kind}{size}"] = (kind, size)
    return out


# numpy dtype strings (``dtype.str``) an array or scalar may have -> (kind, item size).
# long double (f16 / c32) is left out: its bytes mean different things on different machines.
NUMPY_DTYPES: dict[str, tuple[str, int]] = _numpy_dtypes()

# how a non-finite float is spelled in a state tree or in metadata: {"$float": "nan"} (``repr`` of each)
SPECIAL_FLOATS = ("nan", "inf", "-inf")

# largest finite value of each float item size (for ``{"$np": "<f2", "v": ...}`` scalars)
FLOAT_MAX = {2: 65504.0, 4: 3.4028234663852886e38, 8: 1.7976931348623157e308}

# torch device types ``torch.device`` accepts, optionally with ``:index``
DEVICE_TYPES = frozenset({"cpu", "cuda", "mps", "xpu", "meta", "hpu", "xla", "mtia", "ipu", "hip", "ve", "fpga",
                          "maia", "lazy", "vulkan", "privateuseone"})
_DEVICE = re.compile(r"^([a-z]+)(?::(\d{1,5}))?$")


def device_ok(s: object) -> bool:
    """Whether ``s`` is a device string ``torch.device`` accepts (``cuda:0``, ``cpu``)."""
    m = _DEVICE.match(s) if isinstance(s, str) else None
    return bool(m) and m.group(1) in DEVICE_TYPES


def int_range(kind: str, size: int) -> tuple[int, int]:
    """Smallest and largest value of a numpy integer kind (``i``/``u``) of ``size`` bytes."""
    bits = 8 * size
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind == "i" else (0, (1 << bits) - 1)


INT64 = int_range("i", 8)  # an epoch, and an integer in metadata
