import subprocess
import sys

import spotsafe

EXPECTED = [
    "Backoff",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointSkippedWarning",
    "CorruptCheckpointError",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EveryDuration",
    "EverySteps",
    "LeaseLostError",
    "LeaseOptions",
    "MissingDependencyError",
    "Notice",
    "Preempted",
    "ReadOnlyRootError",
    "RemoteAccessError",
    "RemoteError",
    "RemoteUnavailableError",
    "RemoteUnavailableWarning",
    "RestoreStats",
    "RootLockedError",
    "Run",
    "SaveStats",
    "SpotsafeError",
    "SpotsafeWarning",
    "StateMismatchError",
    "Stateful",
    "UnsafeFileError",
    "UnsupportedStateError",
    "UnsupportedURLError",
    "UploadStats",
    "__version__",
    "data",
    "notices",
    "parse_duration",
    "policy",
]


def test_all_is_sorted_and_complete():
    assert spotsafe.__all__ == EXPECTED
    for name in EXPECTED:
        assert getattr(spotsafe, name) is not None


def test_import_has_no_side_effects_and_no_torch():
    code = ("import sys, spotsafe, spotsafe.cli; "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_errors_inherit_builtins():
    assert issubclass(spotsafe.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(spotsafe.CorruptCheckpointError, ValueError)
    assert issubclass(spotsafe.StateMismatchError, ValueError)
    assert issubclass(spotsafe.UnsupportedStateError, TypeError)
    for e in (spotsafe.CheckpointNotFoundError, spotsafe.CorruptCheckpointError, spotsafe.StateMismatchError):
        assert issubclass(e, spotsafe.SpotsafeError)
