"""DCP's .metadata is a pickle: spotsafe's reader unpickles only DCP's own records, never code."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from spotsafe._dist._dcp import _SafeReader


class Boom:
    """Unpickling this runs a command (what a crafted .metadata could do through plain pickle)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_real_index_loads_and_a_crafted_one_runs_nothing(tmp_path):
    model = torch.nn.Linear(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": model.state_dict(), "step": 3}, checkpoint_id=str(tmp_path / "real"))
    meta = _SafeReader(str(tmp_path / "real")).read_metadata()
    assert "model.weight" in meta.state_dict_metadata and meta.state_dict_metadata["model.weight"].size == (3, 4)

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / ".metadata").write_bytes(pickle.dumps(Boom(str(marker))))
    with pytest.raises(pickle.UnpicklingError, match=r"\.metadata names posix\.system"):
        _SafeReader(str(evil)).read_metadata()
    assert not marker.exists()
    with open(evil / ".metadata", "rb") as f:  # the stock reader's pickle.load would have run it
        pickle.load(f)
    assert marker.exists()
