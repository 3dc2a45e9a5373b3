import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from spotsafe._state import decode, encode
from spotsafe.errors import UnsupportedStateError


def roundtrip(obj):
    arrays = []
    tree = encode(obj, arrays)
    import json

    tree = json.loads(json.dumps(tree, allow_nan=False))  # what the manifest really holds
    return decode(tree, lambda kind, i: arrays[i]), arrays


def test_types_json_cannot_tell_apart_survive():
    obj = {
        "tuple": (1, 2.5, "x", None, True),
        "int_keys": {0: "a", 7: "b"},
        "dollar": {"$tensor": 3},
        "floats": [float("inf"), -float("inf"), 0.1, 1e300],
        "big": 2**70,
        "np_scalar": np.float64(0.25),
        "np_int": np.int32(-4),
        "dtype": torch.bfloat16,
        "size": torch.Size([2, 3]),
    }
    back, arrays = roundtrip(obj)
    assert arrays == []
    assert back["tuple"] == (1, 2.5, "x", None, True) and type(back["tuple"]) is tuple
    assert back["int_keys"] == {0: "a", 7: "b"}
    assert back["dollar"] == {"$tensor": 3}
    assert back["floats"][:2] == [float("inf"), -float("inf")] and back["floats"][2] == 0.1
    assert back["big"] == 2**70
    assert back["np_scalar"] == np.float64(0.25) and type(back["np_scalar"]) is np.float64
    assert type(back["np_int"]) is np.int32 and back["np_int"] == -4
    assert back["dtype"] is torch.bfloat16
    assert back["size"] == (2, 3)


def test_nan_and_tensors_and_arrays_become_references():
    t, a = torch.arange(6.0).reshape(2, 3), np.arange(4, dtype=np.uint32)
    back, arrays = roundtrip({"t": t, "a": [a], "nan": float("nan")})
    assert len(arrays) == 2 and arrays[0] is t and arrays[1] is a
    assert back["t"] is t and back["a"][0] is a
    assert math.isnan(back["nan"])


def test_module_state_dict_metadata_and_order_survive():
    sd = torch.nn.BatchNorm1d(3).state_dict()
    back, _ = roundtrip(sd)
    assert type(back) is OrderedDict
    assert list(back) == list(sd)
    assert back._metadata == sd._metadata


@pytest.mark.parametrize("bad", [lambda: 1, object(), np.array(["a"], dtype=object)])
def test_values_that_would_need_pickle_are_refused_with_their_path(bad):
    with pytest.raises(UnsupportedStateError, match=r"\['outer'\]\['inner'\]"):
        encode({"outer": {"inner": bad}}, [], ())
