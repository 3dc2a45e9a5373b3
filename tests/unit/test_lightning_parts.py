"""spotsafe.lightning's parts that need no Trainer: the RNG round trip, the refusal sentence, the loader's length.

(tests/integration/test_lightning.py runs the whole thing for real.)
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from spotsafe.errors import SpotsafeWarning
from spotsafe.lightning import ResumableDataLoader
from spotsafe.lightning._io import refusal
from spotsafe.lightning._rng import PendingRng, Snapshot


def draws() -> tuple:
    return random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_the_saved_rng_state_is_tensors_and_plain_values_and_puts_every_generator_back():
    random.seed(5)
    np.random.seed(7)
    torch.manual_seed(9)
    random.gauss(0, 1)
    np.random.randn()  # both keep a cached gaussian: it must survive the round trip
    saved = Snapshot().saved()
    want = draws()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    PendingRng({"step": 3, "ranks": [saved]}, rank=0).apply()
    assert draws() == want
    # what torch.load(weights_only=True) and spotsafe's manifest both hold: no numpy arrays
    leaves = [saved["python"]["state"], saved["numpy"]["key"], saved["torch"]]
    assert all(isinstance(t, torch.Tensor) for t in leaves) and saved["numpy"]["kind"] == "MT19937"


def test_a_rank_the_checkpoint_has_no_state_for_is_seeded_from_it_with_one_warning():
    saved = {"step": 40, "ranks": [Snapshot().saved(), Snapshot().saved()]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        two, three = PendingRng(saved, rank=2), PendingRng(saved, rank=3)
        again = PendingRng(saved, rank=2)
    assert [str(w.message) for w in caught][0] == (
        "The checkpoint of step 40 holds the RNG states of 2 rank(s) and this is rank 2: its RNGs are seeded from "
        "the checkpoint, the step and the rank instead, so its randomness does not replay that of an uninterrupted "
        "run.")
    assert all(issubclass(w.category, SpotsafeWarning) for w in caught)
    assert two.seed == again.seed != three.seed and two.state is None
    two.apply()
    first = draws()
    again.apply()
    assert draws() == first


def test_a_malformed_saved_rng_state_is_refused_before_anything_changes():
    saved = Snapshot().saved()
    saved["torch"] = torch.zeros(3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="torch RNG state is malformed"):
        PendingRng({"step": 1, "ranks": [saved]}, rank=0)


class Tokenizer:
    """An arbitrary object, as a hyper-parameter."""


def test_a_value_the_manifest_cannot_hold_is_named_with_its_key_and_the_way_out():
    ok = {"lr": 0.1, "layers": [1, 2], "name": "x", "t": torch.ones(2)}
    assert refusal("hyper_parameters", ok) is None
    err = refusal("hyper_parameters", {**ok, "extra": {"tok": Tokenizer()}})
    assert str(err) == (
        "Lightning's checkpoint entry 'hyper_parameters' holds a test_lightning_parts.Tokenizer at "
        "['hyper_parameters']['extra']['tok'], which spotsafe cannot store without pickle; make it a plain value (a "
        "number, string, list, dict or tensor) or leave it out of the checkpoint "
        "(self.save_hyperparameters(ignore=['extra'])).")
    err = refusal("my_key", [1, object()])
    assert "entry 'my_key' holds a builtins.object at ['my_key'][1]" in str(err)
    assert str(err).endswith("(drop it in on_save_checkpoint).")


@pytest.mark.parametrize("n,batch,world,global_batch,drop_last", [
    (64, 4, 1, None, True), (41, 3, 1, None, False), (41, 3, 2, None, True), (40, 5, 2, 20, False),
    (7, 5, 3, None, False)])
def test_the_loader_length_is_a_whole_epoch_and_set_epoch_keeps_the_position(n, batch, world, global_batch, drop_last):
    for rank in range(world):
        loader = ResumableDataLoader(list(range(n)), batch_size=batch, num_replicas=world, rank=rank,
                                     global_batch_size=global_batch, drop_last=drop_last, shuffle=False)
        whole = len(loader.sampler.batches())
        assert len(loader) == whole
        it = iter(loader)
        next(it)
        assert len(loader) == whole  # Lightning counts the epoch against this: not the batches left
        position = loader.position
        loader.sampler.set_epoch(0)  # what Lightning calls at the start of the epoch a resume lands in
        assert (loader.epoch, loader.position) == (0, position)
        loader.sampler.set_epoch(1)
        assert (loader.epoch, loader.position) == (1, 0)


def test_the_checkpoint_io_maps_the_roots_step_names_to_spotsafe_and_round_trips_lightnings_dict(tmp_path):
    import spotsafe
    from spotsafe.lightning import SpotSafeCheckpointIO

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    checkpoint = {"epoch": 1, "global_step": 7, "pytorch-lightning_version": "2.6.6", "state_dict": model.state_dict(),
                  "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "hparams_name": "kwargs",
                  "hyper_parameters": {"lr": 0.1, "dims": (3, 2)}, "callbacks": {"SpotSafe": {"ranks": []}},
                  "loops": {"fit_loop": {"state_dict": {"combined_loader": [{"epoch": 1, "position": 8}]}}}}
    with spotsafe.Run(tmp_path / "root", None, notices=None) as run:
        io = SpotSafeCheckpointIO(run)
        path = io.path_of(7)
        assert path == str(tmp_path / "root" / "step-000000000007") and io.step_of(path) == 7
        assert io.step_of(tmp_path / "elsewhere" / "step-000000000007") is None
        with pytest.raises(ValueError, match=r"root/x\.ckpt, in spotsafe's root, which holds only the run's step-N"):
            io.step_of(tmp_path / "root" / "x.ckpt")
        io.save_checkpoint(checkpoint, path)
        with pytest.raises(ValueError, match="global step 7 as .*step-000000000009, the name of step 9"):
            io.save_checkpoint(checkpoint, io.path_of(9))
        run.manager.wait()
        back = io.load_checkpoint(path)
        io.save_checkpoint(checkpoint, tmp_path / "stock.ckpt")  # outside the root: Lightning's own file
        io.remove_checkpoint(path)  # the run's keep= decides: nothing removed
        assert (tmp_path / "root" / "step-000000000007" / "manifest.json").exists()
    assert back.keys() == checkpoint.keys()  # the manager's own RNG component is not Lightning's
    assert back["loops"] == checkpoint["loops"] and back["hyper_parameters"] == {"lr": 0.1, "dims": (3, 2)}
    assert list(back["state_dict"]) == list(checkpoint["state_dict"])
    assert all(torch.equal(back["state_dict"][k], v) for k, v in checkpoint["state_dict"].items())
    model.load_state_dict(back["state_dict"])
    opt.load_state_dict(back["optimizer_states"][0])
    assert torch.load(tmp_path / "stock.ckpt", weights_only=True)["global_step"] == 7
