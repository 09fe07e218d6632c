"""The fused ops: each one a single node in the graph with a backward pass derived by hand.

    from autograd import functional as F
    y = F.layer_norm(x, weight, bias)

Composing, say, layer norm out of `mean`, `-`, `**`, `sqrt` and `/` works (the engine would
differentiate it: `autograd.reference` does exactly that), but it records a dozen nodes,
allocates a dozen arrays and walks memory a dozen times. A fused op computes its forward in a
few NumPy calls, keeps exactly what its backward needs, and its backward computes all input
gradients at once from those saved arrays.

Each op lives in its own module of `autograd/ops/`, as `<op>_forward` and `<op>_backward` side
by side with the derivation in the backward's docstring (`layer_norm_backward` in
autograd/ops/layer_norm.py, say). `python -m autograd.gradcheck` checks each against finite
differences; tests/test_autograd_ops.py checks each against `autograd.reference`.

    linear                                                     ops/linear.py
    softmax, log_softmax, cross_entropy, linear_cross_entropy  ops/softmax.py
    layer_norm                                                 ops/layer_norm.py
    gelu                                                       ops/gelu.py
    embedding                                                  ops/embedding.py
    dropout                                                    ops/dropout.py
    scaled_dot_product_attention, multi_head_attention,        ops/attention.py
        causal_bias
    rms_norm                                                   ops/rms_norm.py
    rope (rope_frequencies, rope_tables)                       ops/rope.py
    relu_squared                                               ops/relu_squared.py
    swiglu                                                     ops/swiglu.py
    repeat_kv, grouped_query_attention                         ops/repeat_kv.py
    softcap                                                    ops/softcap.py
    relu, tanh: the engine's own elementwise ops (Tensor.relu, Tensor.tanh)
"""
from __future__ import annotations

from .ops.attention import causal_bias, multi_head_attention, scaled_dot_product_attention
from .ops.dropout import dropout
from .ops.embedding import embedding
from .ops.gelu import gelu
from .ops.layer_norm import layer_norm
from .ops.linear import linear
from .ops.relu_squared import relu_squared
from .ops.repeat_kv import grouped_query_attention, repeat_kv
from .ops.rms_norm import rms_norm
from .ops.rope import rope, rope_frequencies
from .ops.softcap import softcap
from .ops.softmax import cross_entropy, linear_cross_entropy, log_softmax, softmax
from .ops.swiglu import swiglu
from .tensor import Tensor

__all__ = ["linear", "softmax", "log_softmax", "cross_entropy", "linear_cross_entropy",
           "layer_norm", "gelu", "embedding", "dropout", "scaled_dot_product_attention",
           "multi_head_attention", "relu", "tanh", "causal_bias", "rms_norm", "rope",
           "rope_frequencies", "relu_squared", "swiglu", "repeat_kv", "grouped_query_attention",
           "softcap"]


def relu(x: Tensor) -> Tensor:
    """max(x, 0) elementwise (Tensor.relu)."""
    return x.relu()


def tanh(x: Tensor) -> Tensor:
    """tanh(x) elementwise (Tensor.tanh)."""
    return x.tanh()
