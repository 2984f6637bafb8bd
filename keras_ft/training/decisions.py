"""`Decisions`: what a run decided from its data, each `"auto"` once, and recorded."""

from __future__ import annotations

import dataclasses

from keras_ft.config import RECORDED_BEFORE

SYMMETRIES = ("flip", "quarter_turns")  # the augmentation options `"auto"` decides


@dataclasses.dataclass
class Decisions:
    """What training decided from the data, in the order it decides them.

    Each `"auto"` is decided once: the augmentation before phase 1 (both
    phases follow it), a phase's learning rate before that phase (phase 2's
    is measured on the weights phase 1 ends with), the fallback after phase
    2. `run.json` records them under `"decisions"` and checkpoints keep them,
    so a resumed run reads them back instead of measuring again.

    Attributes:
        flip: `decide_flip`'s record for `flip="auto"` (`None`: not decided).
        quarter_turns: `decide_quarter_turns`' record for `quarter_turns="auto"`.
        head_lr: the range test's summary for `head_lr="auto"`.
        finetune_lr: the range test's summary for `finetune_lr="auto"`.
        fallback: the model kept after phase 2, and why (`fallback.fall_back`).
    """

    flip: dict | None = None
    quarter_turns: dict | None = None
    head_lr: dict | None = None
    finetune_lr: dict | None = None
    fallback: dict | None = None

    @classmethod
    def from_record(cls, record: dict | None) -> Decisions:
        """The decisions of a run record's (or a checkpoint's) `"decisions"` object."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{name: value for name, value in (record or {}).items() if name in names})

    def record(self) -> dict:
        """The `"decisions"` object of `run.json`: the decisions taken, by name."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def augmentation(self, data_config: dict) -> dict[str, bool]:
        """The flips and quarter turns training used, `"auto"` resolved, from a run's
        recorded `data` configuration (all False when augmentation was off)."""
        resolved = {}
        for name in SYMMETRIES:
            value = data_config.get(name, RECORDED_BEFORE[name])
            if value == "auto":
                value = bool((getattr(self, name) or {}).get(name, False))
            resolved[name] = value is True and bool(data_config.get("augment", False))
        return resolved

    def symmetries(self, data_config: dict) -> tuple[str, ...]:
        """The names of `augmentation`'s that training used (for test-time augmentation)."""
        return tuple(name for name, used in self.augmentation(data_config).items() if used)
