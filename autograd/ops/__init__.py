"""The fused ops, one module per family: the math of each op on plain NumPy arrays.

Every op here is written the same way, so that one can be read like the next:

    <op>_forward(arrays...)              -> (output, saved)
    <op>_backward(d_output, saved, ...)  -> the gradient of each input (None where not needed)
    <op>(tensors...)                     -> Tensor: calls <op>_forward and records one graph
                                            node whose backward calls <op>_backward

`saved` is a small named tuple of exactly what the backward needs from the forward. Each
backward is derived in its docstring, and the names in its code are the names of the
derivation. The public entry point is `autograd.functional` (`from autograd import
functional as F`), which imports the ops from these modules; `autograd.reference` holds the
same ops composed from elementary Tensor ops, which the tests compare these against.

    linear.py      linear: y = x W + b
    softmax.py     softmax, log_softmax, cross_entropy, linear_cross_entropy
    layer_norm.py  layer_norm
    gelu.py        gelu (the tanh approximation)
    embedding.py   embedding (a row lookup; its backward is a scatter-add)
    dropout.py     dropout
    attention.py   scaled_dot_product_attention, multi_head_attention, causal_bias

Ops of later models (Llama, Qwen3, nanochat):

    rms_norm.py    rms_norm
    rope.py        rope (rotary position embeddings)
    relu_squared.py, swiglu.py, softcap.py     activations and logit soft-capping
    repeat_kv.py   repeat_kv, grouped_query_attention

Helpers the ops share:

    sums.py        row_sums, col_sums, row_means: reductions as matrix-vector products
    chunks.py      in_chunks: long elementwise chains one cache-sized slice at a time
    graph.py       record, needs_grad: how a fused op becomes one node of the graph

Shapes in comments: B batch, T query positions, S key positions, C channels, H heads,
D head size, V vocabulary, N rows after flattening the leading axes.
"""
