"""autograd: a reverse-mode automatic differentiation engine on NumPy arrays.

    from autograd import Tensor, no_grad
    from autograd import functional as F
    from autograd.nn import Module, Linear, ...
    from autograd.optim import AdamW, clip_grad_norm
    from autograd.gradcheck import gradcheck
"""
from . import functional, nn, optim
from .allocator import keep_freed_memory
from .nn import Module, Parameter
from .random import manual_seed
from .tensor import (Tensor, cat, concatenate, enable_grad, is_grad_enabled, no_grad, split,
                     stack, unbroadcast)

__all__ = ["Tensor", "no_grad", "enable_grad", "is_grad_enabled", "concatenate", "cat",
           "stack", "split", "unbroadcast", "manual_seed", "functional", "nn", "optim", "Module",
           "Parameter"]

keep_freed_memory()
