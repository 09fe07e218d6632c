"""autograd: a reverse-mode automatic differentiation engine on NumPy arrays.

    from autograd import Tensor, no_grad
    from autograd import functional as F
    from autograd.nn import Module, Linear, ...
    from autograd.optim import AdamW, clip_grad_norm
    from autograd.gradcheck import gradcheck
    from autograd.profiler import profile
    from autograd.parallel import DataParallel
    from autograd.allocator import keep_freed_memory   # a script's choice: tunes malloc

Importing the package changes nothing outside it: the malloc tuning that training and
generation profit from is an explicit call (`autograd.allocator`), made by train.py and chat.py.
"""
from . import functional, nn, optim
from .nn import Module, Parameter
from .random import manual_seed
from .tensor import (Tensor, cat, concatenate, enable_grad, is_grad_enabled, no_grad, split,
                     stack, unbroadcast)

__all__ = ["Tensor", "no_grad", "enable_grad", "is_grad_enabled", "concatenate", "cat",
           "stack", "split", "unbroadcast", "manual_seed", "functional", "nn", "optim", "Module",
           "Parameter"]
