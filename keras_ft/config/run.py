"""`RunConfig`: one run's whole configuration, as `run.json` records it."""

from __future__ import annotations

import dataclasses

from keras_ft.config.checks import check
from keras_ft.config.data_config import DataConfig
from keras_ft.config.model_config import ModelConfig
from keras_ft.config.records import from_dict, to_dict
from keras_ft.config.training_config import TrainingConfig
from keras_ft.utils.errors import KerasFTError

SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The configuration of one run: its data, model, training and recipe.

    A run has one image size: the model is built for the data's. `run.json`
    is this configuration (its `"data"`, `"model"`, `"training"` and
    `"recipe"`), what training decided from the data (`"decisions"`), and the
    provenance (versions, hardware, the data's and the weights' hashes).
    `reproduce` rebuilds it from the record, older records included (an
    option they lack takes the value it had then, `RECORDED_BEFORE`).

    Attributes:
        data: the `DataConfig`.
        model: the `ModelConfig`.
        training: the `TrainingConfig`, its options as the recipe resolved them.
        recipe: the recipe's name and the settings it applied
            (`{"name": "auto", "applied": {...}}`), or None.
    """

    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    recipe: dict | None = None

    def __post_init__(self):
        check(
            self.model.image_size == self.data.image_size,
            "image_size",
            f"the data's, {self.data.image_size}",
            self.model.image_size,
            "Build the model for the data's image size.",
        )

    @property
    def seed(self) -> int:
        """The seed of the initializers, the dropout and the training (`--seed` also seeds
        the data's split and augmentation, `data.seed`)."""
        return self.model.seed

    @property
    def image_size(self) -> tuple[int, int]:
        return self.data.image_size

    def record(self) -> dict:
        """The configuration's keys of `run.json`."""
        return {
            "data": to_dict(self.data),
            "model": to_dict(self.model),
            "training": to_dict(self.training),
            "recipe": self.recipe,
        }

    @classmethod
    def from_record(cls, record: dict, where: str = "run.json") -> RunConfig:
        """The configuration a run record holds; a damaged section is refused in one line
        naming `where`."""
        sections = {}
        for key, config in SECTIONS.items():
            try:
                sections[key] = from_dict(config, record[key])
            except (TypeError, ValueError) as error:  # KerasFTError included
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise KerasFTError(
                    f"'{where}' is damaged: '{key}' does not rebuild a {config.__name__} "
                    f"({reason}). Restore the run directory from a copy."
                ) from None
        return cls(**sections, recipe=record.get("recipe"))
