"""Triton kernels for the two custom ops (GPU path; CPU via TRITON_INTERPRET=1 for tests).

bitlinear_triton: BitLinear on 2-bit packed weights with int8 activations (prefill and decode kernels).
window_attention_triton: sliding-window causal attention, cost linear in sequence length, and the
    positioned attention of a decode step (cached_attention).
exact_linear_triton: the head, accumulated in float64 and rounded once.
Both are callable from PyTorch on tensors of the kernel's device. On a GPU they are the fast CUDA
eager path; that path is not verified here (no GPU on this machine): correctness is checked under
Triton's interpreter.
"""


def register_cuda_kernels() -> bool:
    """Make the Triton kernels the CUDA implementation of torch.ops.depthscale.* (the fast CUDA eager
    path). Returns False, registering nothing, without CUDA or triton. Not verified here: no GPU."""
    import torch
    if not torch.cuda.is_available():
        return False
    try:
        from .bitlinear_triton import bitlinear_triton
        from .exact_linear_triton import exact_linear_triton
        from .window_attention_triton import cached_attention_triton, window_attention_triton
    except ImportError:
        return False
    from .. import exact_math, window_attention  # noqa: F401  (define the ops registered below)
    from ..bitlinear import swiglu

    torch.library.register_kernel("depthscale::bitlinear", "cuda", bitlinear_triton)
    torch.library.register_kernel("depthscale::gated_bitlinear", "cuda",
                                  lambda x, w, g, in_features: bitlinear_triton(swiglu(x), w, g, in_features))
    torch.library.register_kernel("depthscale::window_attention", "cuda", window_attention_triton)
    torch.library.register_kernel("depthscale::cached_attention", "cuda", cached_attention_triton)
    torch.library.register_kernel("depthscale::exact_linear", "cuda", exact_linear_triton)
    return True
