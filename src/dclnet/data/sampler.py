"""Aligned P x K visible/infrared identity sampler.

Each batch holds ``P`` distinct identities and ``K`` visible plus ``K`` infrared images of
each, drawn with replacement and laid out identity-major in the same order in both arrays,
so that visible image ``i`` and infrared image ``i`` show the same person (the dense loss
pairs them position by position).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from dclnet.errors import CheckpointError, DataError

logger = logging.getLogger(__name__)

_STATE_KEYS = ("seed", "num_ids", "num_instances", "world_size")


class _LabelTable:
    """Images of one modality grouped by identity, in compressed (CSR) form.

    ``indices[starts[j] : starts[j] + counts[j]]`` are the dataset rows of identity
    ``identities[j]``; drawing ``starts[j] + randint(counts[j])`` samples one of them.
    """

    def __init__(self, labels: np.ndarray, identities: np.ndarray):
        rows = np.flatnonzero(np.isin(labels, identities))
        slot = np.searchsorted(identities, labels[rows])  # position of each row's identity
        order = np.argsort(slot, kind="stable")
        self.indices = rows[order]
        self.counts = np.bincount(slot, minlength=len(identities))
        self.starts = np.cumsum(self.counts) - self.counts

    def draw(self, rng: np.random.Generator, slots: np.ndarray, k: int) -> np.ndarray:
        """``k`` rows with replacement for every identity slot: ``B x P`` → ``B x P x k``."""
        offsets = rng.integers(0, self.counts[slots][..., None], size=(*slots.shape, k))
        return self.indices[self.starts[slots][..., None] + offsets]


def _as_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{name} must be a non-empty 1-D integer array, got shape {labels.shape} "
            f"dtype {labels.dtype}; pass the identity label of every image"
        )
    return labels.astype(np.int64, copy=False)


class CrossModalitySampler:
    """Yields aligned P x K batches of dataset rows, one pair of arrays per step.

    Each item is ``(visible_indices, infrared_indices)``: two int64 arrays of length
    ``P * K`` indexing the visible and the infrared image sets; ``labels[vis[i]] ==
    labels[ir[i]]`` for every ``i``. Only identities present in both modalities are drawn.

    Randomness: the batches of an epoch are a pure function of ``(seed, epoch, rank)``
    (a numpy ``SeedSequence`` over the three numbers), so the same seed gives the same
    batches, ranks get independent streams, and resuming from :meth:`state_dict`
    continues with exactly the batches an uninterrupted run would have produced.

    Distributed training: every rank builds its own sampler with its ``rank`` and the
    common ``world_size``. An epoch has ``T = ceil(max(#visible, #infrared) / (P * K))``
    batches in total; each rank yields ``ceil(T / world_size)`` of them from its own
    stream, so all ranks take the same number of steps and together cover (at least) ``T``
    batches. Ranks sample independently: every batch is self-contained (the losses never
    pair images across ranks), so identities may repeat across ranks in the same step.

    Position tracking: the sampler counts the batches its iterator has handed out. When a
    ``DataLoader`` with workers prefetches batches ahead of training, save the number of
    steps actually trained instead: ``state = sampler.state_dict(); state["position"] =
    steps_done_this_epoch``.
    """

    def __init__(
        self,
        visible_labels: np.ndarray,
        infrared_labels: np.ndarray,
        *,
        num_ids: int = 8,
        num_instances: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        """Build the identity tables.

        Args:
            visible_labels: Identity of every visible image (``N_v``).
            infrared_labels: Identity of every infrared image (``N_i``).
            num_ids: ``P``, distinct identities per batch.
            num_instances: ``K``, images per identity and modality (drawn with replacement).
            seed: Non-negative base seed.
            rank: This process's rank in ``[0, world_size)``.
            world_size: Number of processes sharing the epoch.

        Raises:
            DataError: Malformed labels, or fewer than ``num_ids`` shared identities.
            ValueError: Invalid ``num_ids``, ``num_instances``, ``seed``, ``rank`` or
                ``world_size``.
        """
        if num_ids < 1 or num_instances < 1:
            raise ValueError(
                f"num_ids and num_instances must be >= 1, got {num_ids}, {num_instances}"
            )
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}"
            )
        vis = _as_labels(visible_labels, "visible_labels")
        ir = _as_labels(infrared_labels, "infrared_labels")
        self.identities = self._shared_identities(vis, ir, num_ids)
        self._visible = _LabelTable(vis, self.identities)
        self._infrared = _LabelTable(ir, self.identities)
        self.num_ids, self.num_instances = int(num_ids), int(num_instances)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.total_batches = -(-max(len(vis), len(ir)) // (self.num_ids * self.num_instances))
        self._epoch = 0
        self._position = 0

    @staticmethod
    def _shared_identities(vis: np.ndarray, ir: np.ndarray, num_ids: int) -> np.ndarray:
        vis_ids, ir_ids = np.unique(vis), np.unique(ir)
        shared = np.intersect1d(vis_ids, ir_ids)
        only_vis, only_ir = len(vis_ids) - len(shared), len(ir_ids) - len(shared)
        if only_vis or only_ir:
            logger.warning(
                "%d identities appear in only one modality (%d visible-only, %d infrared-only) "
                "and are excluded from sampling",
                only_vis + only_ir,
                only_vis,
                only_ir,
            )
        if len(shared) < num_ids:
            raise DataError(
                f"only {len(shared)} identities have both visible and infrared images but "
                f"num_ids={num_ids} distinct identities are needed per batch; lower num_ids "
                f"to at most {len(shared)}"
            )
        return shared

    def __len__(self) -> int:
        """Batches this rank yields per epoch: ``ceil(total_batches / world_size)``."""
        return -(-self.total_batches // self.world_size)

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to draw; a new epoch starts at its first batch."""
        if epoch != self._epoch:
            self._epoch = int(epoch)
            self._position = 0

    def epoch_batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """All batches of ``epoch`` for this rank, each ``len(self) x (P * K)`` int64."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, self.rank]))
        num_batches, p, k = len(self), self.num_ids, self.num_instances
        # P distinct identity slots per batch: the first P of a random permutation per row.
        keys = rng.random((num_batches, len(self.identities)))
        slots = np.argsort(keys, axis=1)[:, :p]  # B x P
        vis = self._visible.draw(rng, slots, k)  # B x P x K
        ir = self._infrared.draw(rng, slots, k)  # B x P x K
        return vis.reshape(num_batches, p * k), ir.reshape(num_batches, p * k)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch, starting after the batches already consumed (see :meth:`state_dict`)."""
        vis, ir = self.epoch_batches(self._epoch)
        for b in range(self._position, len(vis)):
            self._position = b + 1  # counted as consumed once handed out
            yield vis[b], ir[b]
        self._position = 0

    def state_dict(self) -> dict:
        """Epoch and position within it, plus the settings the stream depends on.

        The state is the same on every rank (ranks step in lockstep), so the state saved by
        rank 0 resumes all ranks.
        """
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "num_ids": self.num_ids,
            "num_instances": self.num_instances,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state["epoch"]`` after ``state["position"]`` consumed batches.

        Raises:
            CheckpointError: The state was saved with different sampling settings (the
                stream would not continue where it stopped) or has an invalid position.
        """
        for key in _STATE_KEYS:
            if key in state and state[key] != getattr(self, key):
                raise CheckpointError(
                    f"sampler state has {key}={state[key]} but this run uses "
                    f"{key}={getattr(self, key)}; resume with the same setting"
                )
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise CheckpointError(
                f"sampler state position {position} is outside 0..{len(self)} batches per "
                "epoch; the checkpoint does not match this data set"
            )
        self._epoch = int(state["epoch"])
        self._position = position
