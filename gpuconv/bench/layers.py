"""Named problem sets shared by benchmarks and tests: ResNet-50 v1.5 convs, 3D U-Net / C3D convs, SegNet pools,
MobileNet v1's depthwise convs.

Each entry is user-facing (NHWC / NDHWC shapes, TF filter layout), so a benchmark or test calls the public API
with it directly. Sources: ResNet-50 v1.5 (torchvision / MLPerf reference: stride 2 on the 3x3 conv of each
stage's first block), 3D U-Net (Cicek et al. 2016, 3x3x3 convs), C3D (Tran et al. 2015), SegNet (Badrinarayanan
et al. 2017: 2x2/2 max pooling with indices, encoder of VGG-16 at 360x480).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvLayer:
    name: str
    input_shape: tuple[int, ...]      # NHWC or NDHWC, batch excluded (added by `with_batch`)
    filter_shape: tuple[int, ...]     # (kh, kw, in, out) or (kd, kh, kw, in, out)
    strides: int
    padding: str

    def with_batch(self, n: int) -> tuple[int, ...]:
        return (n,) + self.input_shape

    @property
    def nspatial(self) -> int:
        return len(self.input_shape) - 1


@dataclass(frozen=True)
class PoolLayer:
    name: str
    input_shape: tuple[int, ...]      # HWC, batch excluded
    ksize: int
    strides: int
    padding: str

    def with_batch(self, n: int) -> tuple[int, ...]:
        return (n,) + self.input_shape


# ResNet-50 v1.5 conv layers (one of each distinct shape; 224x224 input).
RESNET50 = (
    ConvLayer("conv1_7x7s2", (224, 224, 3), (7, 7, 3, 64), 2, "SAME"),
    ConvLayer("res2_1x1_64", (56, 56, 64), (1, 1, 64, 64), 1, "SAME"),
    ConvLayer("res2_3x3_64", (56, 56, 64), (3, 3, 64, 64), 1, "SAME"),
    ConvLayer("res2_1x1_256", (56, 56, 64), (1, 1, 64, 256), 1, "SAME"),
    ConvLayer("res2_1x1_256to64", (56, 56, 256), (1, 1, 256, 64), 1, "SAME"),
    ConvLayer("res3_3x3_128s2", (56, 56, 128), (3, 3, 128, 128), 2, "SAME"),
    ConvLayer("res3_3x3_128", (28, 28, 128), (3, 3, 128, 128), 1, "SAME"),
    ConvLayer("res3_1x1_512", (28, 28, 128), (1, 1, 128, 512), 1, "SAME"),
    ConvLayer("res4_3x3_256s2", (28, 28, 256), (3, 3, 256, 256), 2, "SAME"),
    ConvLayer("res4_3x3_256", (14, 14, 256), (3, 3, 256, 256), 1, "SAME"),
    ConvLayer("res4_1x1_1024", (14, 14, 256), (1, 1, 256, 1024), 1, "SAME"),
    ConvLayer("res5_3x3_512s2", (14, 14, 512), (3, 3, 512, 512), 2, "SAME"),
    ConvLayer("res5_3x3_512", (7, 7, 512), (3, 3, 512, 512), 1, "SAME"),
    ConvLayer("res5_1x1_2048", (7, 7, 512), (1, 1, 512, 2048), 1, "SAME"),
)

# The 3x3 ResNet-50 layers the GPU fprop target is stated for.
RESNET50_3X3 = tuple(layer for layer in RESNET50 if layer.filter_shape[0] == 3)

# 3D U-Net (input 132^3 cropped to a benchmarkable 64^3 tile) and C3D (16 frames of 112x112) conv layers.
UNET3D_C3D = (
    ConvLayer("unet3d_enc1", (64, 64, 64, 1), (3, 3, 3, 1, 32), 1, "SAME"),
    ConvLayer("unet3d_enc1b", (64, 64, 64, 32), (3, 3, 3, 32, 64), 1, "SAME"),
    ConvLayer("unet3d_enc2", (32, 32, 32, 64), (3, 3, 3, 64, 64), 1, "SAME"),
    ConvLayer("unet3d_enc3", (16, 16, 16, 128), (3, 3, 3, 128, 128), 1, "SAME"),
    ConvLayer("c3d_conv1", (16, 112, 112, 3), (3, 3, 3, 3, 64), 1, "SAME"),
    ConvLayer("c3d_conv3a", (8, 28, 28, 128), (3, 3, 3, 128, 256), 1, "SAME"),
)

# MobileNet v1's depthwise 3x3 layers (Howard et al. 2017; 224x224 input), one of each distinct shape: one input
# channel per group (groups = C, implied by the TF filter layout (3, 3, 1, C)). The `mobilenet` set of
# `gpuconv bench`, and the cases of the CPU depthwise benchmark (benchmarks/numpy_depthwise.py).
MOBILENET_DW = (
    ConvLayer("mbv1_dw1", (112, 112, 32), (3, 3, 1, 32), 1, "SAME"),
    ConvLayer("mbv1_dw2s2", (112, 112, 64), (3, 3, 1, 64), 2, "SAME"),
    ConvLayer("mbv1_dw3", (56, 56, 128), (3, 3, 1, 128), 1, "SAME"),
    ConvLayer("mbv1_dw4s2", (56, 56, 128), (3, 3, 1, 128), 2, "SAME"),
    ConvLayer("mbv1_dw5", (28, 28, 256), (3, 3, 1, 256), 1, "SAME"),
    ConvLayer("mbv1_dw6s2", (28, 28, 256), (3, 3, 1, 256), 2, "SAME"),
    ConvLayer("mbv1_dw7", (14, 14, 512), (3, 3, 1, 512), 1, "SAME"),
    ConvLayer("mbv1_dw8s2", (14, 14, 512), (3, 3, 1, 512), 2, "SAME"),
    ConvLayer("mbv1_dw9", (7, 7, 1024), (3, 3, 1, 1024), 1, "SAME"),
)

# SegNet encoder pooling ladder: 2x2 stride-2 max pooling with indices at each VGG-16 stage (360x480 input).
SEGNET = (
    PoolLayer("segnet_pool1", (360, 480, 64), 2, 2, "VALID"),
    PoolLayer("segnet_pool2", (180, 240, 128), 2, 2, "VALID"),
    PoolLayer("segnet_pool3", (90, 120, 256), 2, 2, "VALID"),
    PoolLayer("segnet_pool4", (45, 60, 512), 2, 2, "VALID"),
    PoolLayer("segnet_pool5", (22, 30, 512), 2, 2, "VALID"),
)

# Small layers for `python -m gpuconv bench --quick` (seconds on a CPU): a 3x3 conv, a stride-2 3x3 conv with
# TF's asymmetric SAME padding, a small 3-D conv, and a SegNet-like 2x2/2 pool on an odd-sized map.
QUICK = (
    ConvLayer("quick_3x3_64", (28, 28, 64), (3, 3, 64, 64), 1, "SAME"),
    ConvLayer("quick_3x3s2_64", (28, 28, 32), (3, 3, 32, 64), 2, "SAME"),
    ConvLayer("quick_3d_16", (8, 16, 16, 16), (3, 3, 3, 16, 16), 1, "SAME"),
    PoolLayer("quick_pool_45x60", (45, 60, 64), 2, 2, "SAME"),
)

LAYER_SETS = {"resnet50": RESNET50, "unet3d": UNET3D_C3D, "segnet": SEGNET, "mobilenet": MOBILENET_DW, "quick": QUICK}
