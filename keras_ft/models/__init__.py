"""models: the backbone registry, the built-in backbones, the classifier around them.

Importing the package registers the built-in backbones (`presets`), so that
`keras_ft.models.backbones` never holds an empty registry.
"""

from keras_ft.models import presets as presets
