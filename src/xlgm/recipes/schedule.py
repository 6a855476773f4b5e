"""The step schedule of a training: how many optimizer steps an epoch has, how many the run takes, and at which
steps it saves a checkpoint.

`recipes.train.train` follows it and the study planner (`study.units.expected_checkpoint_steps`) predicts a run's
checkpoints from it before the run is trained, so the two can never disagree.

An epoch is ceil(rows / batch_size) micro-batches; one optimizer step takes `grad_accum` of them in each process,
so an epoch has (micro-batches // (grad_accum x processes)) whole steps (at least one); a run takes
round(steps an epoch x epochs) steps (at least one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xlgm.core.errors import XlgmError


def total_steps(steps_per_epoch: int, epochs: float) -> int:
    """The run's optimizer steps: `epochs` (which may be fractional) rounded to whole steps, half to even as
    Python's round does, and at least one."""
    return max(1, int(round(steps_per_epoch * epochs)))


@dataclass(frozen=True)
class StepSchedule:
    steps_per_epoch: int
    total_steps: int
    save_every: int  # a checkpoint every N steps before the last (0: the last only)
    micro_batches_per_step: int  # grad_accum x processes: one step's micro-batches, all processes together

    def saves_before_the_end(self, step: int) -> bool:
        """Whether the run saves a checkpoint after `step` on its way (the last step always saves one)."""
        return bool(self.save_every) and step % self.save_every == 0 and step < self.total_steps

    def checkpoint_steps(self) -> list[int]:
        """The steps of the checkpoints a run that trains to the end saves (early stopping saves fewer)."""
        every = self.save_every
        return (list(range(every, self.total_steps, every)) if every else []) + [self.total_steps]


def step_schedule(
    num_rows: int, batch_size: int, grad_accum: int, epochs: float, save_every: int, processes: int = 1
) -> StepSchedule:
    """The schedule of a run over `num_rows` training rows in `processes` processes."""
    micro_per_epoch = math.ceil(num_rows / batch_size)
    per_step = grad_accum * processes
    if processes > 1 and micro_per_epoch < per_step:
        raise XlgmError(
            f"{num_rows} training rows make {micro_per_epoch} micro-batches of {batch_size}, "
            f"fewer than one step of {processes} processes x --grad-accum {grad_accum} needs"
        )
    steps_per_epoch = max(1, micro_per_epoch // per_step)
    return StepSchedule(steps_per_epoch, total_steps(steps_per_epoch, epochs), save_every, per_step)


def config_schedule(config, num_rows: int, processes: int = 1) -> StepSchedule:
    """The schedule of a `TrainConfig`, read field by field (recipes.train imports this module, not the reverse)."""
    return step_schedule(num_rows, config.batch_size, config.grad_accum, config.epochs, config.save_every, processes)
