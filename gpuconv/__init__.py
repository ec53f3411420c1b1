"""gpuconv: convolution and pooling with TensorFlow's exact semantics, as CUDA kernels on CuPy arrays and as a
NumPy fallback. Importing it never initialises CUDA and never needs CuPy or a GPU."""
from .backend import get_backend, use_backend
from .conv import (conv2d, conv2d_backprop_filter, conv2d_backprop_input, conv2d_transpose, conv3d,
                   conv3d_backprop_filter, conv3d_backprop_input, conv3d_transpose)
from .info import info
from .precision import float32_precision, get_float32_precision
from .pool import (avg_pool2d, avg_pool3d, avg_pool3d_grad, avg_pool_grad, max_pool2d, max_pool3d,
                   max_pool3d_grad, max_pool_grad, max_pool_grad_with_argmax, max_pool_with_argmax)
from .unpool import avg_unpool, max_unpool, max_unpool_grad

__version__ = "0.1.0"

__all__ = [
    "conv2d", "conv3d", "conv2d_transpose", "conv3d_transpose", "conv2d_backprop_input",
    "conv2d_backprop_filter", "conv3d_backprop_input", "conv3d_backprop_filter",
    "max_pool2d", "max_pool3d", "avg_pool2d", "avg_pool3d", "max_pool_with_argmax", "max_pool_grad",
    "max_pool3d_grad", "max_pool_grad_with_argmax", "avg_pool_grad", "avg_pool3d_grad",
    "max_unpool", "max_unpool_grad", "avg_unpool", "use_backend", "get_backend", "float32_precision",
    "get_float32_precision", "info",
]
