"""spotsafe's resumable loader as Lightning's train loader: the two things Lightning needs differently.

Lightning keeps the position of a train loader that has ``state_dict``/``load_state_dict``
(the fit loop's ``combined_loader`` state, saved on every checkpoint and loaded before the
first batch of a resume). :class:`spotsafe.data.ResumableDataLoader` has both, and counts a
batch as consumed when it hands it over: Lightning does not prefetch from a loader with a
length (its ``_PrefetchDataFetcher`` only prefetches to find the last batch of an unsized
one), so a checkpoint taken in ``on_train_batch_end`` holds exactly the batches trained on.
Two things differ from a plain loop:

* Length. Lightning sizes an epoch once, from ``len(loader)``, and counts the batches it
  restored towards it (``batch_progress``). The loader must give the whole epoch's batches,
  not the ones left (``ResumableDataLoader.__len__``), or a resumed epoch ends early.
* Epochs. Lightning calls ``sampler.set_epoch(current_epoch)`` at the start of every epoch,
  also of the epoch a mid-epoch checkpoint resumes into. ``ResumableSampler.set_epoch`` jumps
  to the epoch's start, which would replay what was trained on; here it does so only for
  another epoch than the one the sampler is in. Lightning stops pulling at the epoch's last
  batch (it knows the length), so the loader never sees its iterator end: the next epoch
  starts with Lightning's ``set_epoch``, numbered as Lightning numbers epochs.
"""

from __future__ import annotations

from ..data import ResumableDataLoader as _Resumable
from ..data import ResumableSampler


class _EpochSampler(ResumableSampler):
    """A :class:`ResumableSampler` whose ``set_epoch`` keeps the position within the current epoch."""

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            super().set_epoch(epoch)

    def epoch_batches(self) -> int:
        """This rank's batches in a whole epoch (micro-batches with ``global_batch_size``)."""
        whole, rest = divmod(self.n, self.global_batch)
        return (whole + (1 if rest and not self.drop_last else 0)) * self.grad_accum


class ResumableDataLoader(_Resumable):
    """:class:`spotsafe.data.ResumableDataLoader` for a Lightning ``Trainer``: resumes mid-epoch exactly.

    Pass it as the train loader (``trainer.fit(model, train_dataloaders=loader)`` or from
    ``train_dataloader()``); the checkpoint then holds its position and a resume continues
    with the next batch, in every later epoch in the same order as an uninterrupted run. It
    takes the same arguments as :class:`spotsafe.data.ResumableDataLoader`. Under DDP, give
    each rank ``num_replicas=`` the world size and ``rank=`` its rank (Lightning does not put a
    ``DistributedSampler`` into a loader it did not build).

    ``len()`` is the number of batches of a whole epoch (what Lightning counts an epoch
    against), not the batches left.
    """

    _sampler_type = _EpochSampler

    def __len__(self) -> int:
        sampler = self.sampler
        assert isinstance(sampler, _EpochSampler)
        return sampler.epoch_batches()
