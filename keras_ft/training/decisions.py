"""`Decisions`: what a run decided from its data, each `"auto"` once, and recorded."""

from __future__ import annotations

import dataclasses

from keras_ft.config import DECIDED_FROM_DATA, RECORDED_BEFORE

RATES = ("head_lr", "finetune_lr")
TAKEN = ("time_budget", *RATES, "fallback")  # the decisions besides the augmentation


@dataclasses.dataclass
class Decisions:
    """What training decided from the data, in the order it decides them.

    Each `"auto"` is decided once: the augmentation before phase 1 (both
    phases follow it), then the epochs a `time_budget` allows, a phase's
    learning rate before that phase (phase 2's is measured on the weights
    phase 1 ends with), the fallback after phase 2. `run.json` records them
    under `"decisions"`, one object per decision, and checkpoints keep them,
    so a resumed run reads them back instead of measuring again.

    Attributes:
        time_budget: the epochs planned for `time_budget`, and what they were
            planned from (`keras_ft.training.budget`).
        augmentation: `{option: record}` for each augmentation option of
            `DECIDED_FROM_DATA` that was `"auto"` (e.g. `decide_flip`'s record,
            whose `"flip"` is the decision).
        head_lr: the range test's summary for `head_lr="auto"`.
        finetune_lr: the range test's summary for `finetune_lr="auto"`.
        fallback: the model kept after phase 2, and why (`fallback.fall_back`).
    """

    augmentation: dict[str, dict] = dataclasses.field(default_factory=dict)
    time_budget: dict | None = None
    head_lr: dict | None = None
    finetune_lr: dict | None = None
    fallback: dict | None = None

    @classmethod
    def from_record(cls, record: dict | None) -> Decisions:
        """The decisions of a run record's (or a checkpoint's) `"decisions"` object."""
        record = record or {}
        return cls(
            augmentation={k: v for k, v in record.items() if k in DECIDED_FROM_DATA},
            **{name: record.get(name) for name in TAKEN},
        )

    def record(self) -> dict:
        """The `"decisions"` object of `run.json`: the decisions taken, by name."""
        taken = {name: getattr(self, name) for name in TAKEN}
        return {**self.augmentation, **{k: v for k, v in taken.items() if v is not None}}

    def augmented(self, data_config: dict) -> dict[str, bool]:
        """`{option: used}` for the augmentation options of `DECIDED_FROM_DATA`, `"auto"`
        resolved, from a run's recorded `data` configuration (all False when
        augmentation was off)."""
        used = {}
        for name in DECIDED_FROM_DATA:
            value = data_config.get(name, RECORDED_BEFORE[name])
            if value == "auto":
                value = bool(self.augmentation.get(name, {}).get(name, False))
            used[name] = value is True and bool(data_config.get("augment", False))
        return used

    def symmetries(self, data_config: dict) -> tuple[str, ...]:
        """The options of `augmented` that training used (test-time augmentation adds
        their views)."""
        return tuple(name for name, used in self.augmented(data_config).items() if used)
