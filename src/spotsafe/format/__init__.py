"""Format layer: the checkpoint layout, the manifest schema and checksums (no torch)."""

from ._hash import ALGORITHM, digest_bytes, digest_file, new_hasher
from ._layout import (
    MANIFEST,
    component_file,
    is_leftover,
    parse_step_dir,
    step_dir,
    tmp_dir,
    trash_dir,
)
from ._manifest import (
    FORMAT_VERSION,
    ComponentEntry,
    FileEntry,
    Manifest,
    ManifestError,
    TensorEntry,
    decode_metadata,
    default_versions,
    encode_metadata,
    parse_manifest,
)
from ._verify import (
    CheckpointInfo,
    check_checkpoint,
    committed_steps,
    content_problem,
    list_checkpoints,
    read_manifest,
    size_problem,
)

__all__ = [
    "ALGORITHM",
    "FORMAT_VERSION",
    "MANIFEST",
    "CheckpointInfo",
    "ComponentEntry",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "TensorEntry",
    "check_checkpoint",
    "committed_steps",
    "component_file",
    "content_problem",
    "decode_metadata",
    "default_versions",
    "digest_bytes",
    "digest_file",
    "encode_metadata",
    "is_leftover",
    "list_checkpoints",
    "new_hasher",
    "parse_manifest",
    "parse_step_dir",
    "read_manifest",
    "size_problem",
    "step_dir",
    "tmp_dir",
    "trash_dir",
]
