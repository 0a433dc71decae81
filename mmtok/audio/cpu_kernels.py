"""CPU inference kernels of the audio codec (:mod:`mmtok.audio.modeling_audio`): the same convolutions, computed faster.

The codec's convs call these when autograd is off (``encode``, ``decode``, streaming); training keeps plain
``F.conv1d`` / ``F.conv_transpose1d`` in the channel-first layout, whose backward is faster. Both compute the same
function (``tests/mmtok/test_audio_cpu_kernels.py`` compares them). At EnCodec's size the codec encodes and decodes
about 1.5x faster than ``transformers.EncodecModel`` on 2 CPU cores (``bench/audio_tokenizer.py``).

The tricks, and why:

* **Time-major activations** (:func:`time_major`): ``[B, C, L]`` tensors stored as ``[B, L, C]`` in memory, which is
  what oneDNN's channels-last kernels read and write. In the plain layout oneDNN reorders the input and the output
  of every conv, about half of a conv's time; time-major, a conv costs its arithmetic. Elementwise ops keep the
  layout, and the encoder's latent ``[B, D, F]`` transposes for free to the channel-last ``[B, F, D]`` the residual
  VQ takes. Every conv runs as a 2-D conv over ``[B, C, 1, L]`` channels-last (:func:`conv1d`,
  :func:`conv_transpose1d`).
* **Cached weights** (:func:`inference_weight`): the weight-normalized weight in that channels-last layout, computed
  once and kept until a parameter changes, so encoding, decoding and above all streaming small chunks do not redo
  the weight norm on every call (the price: a second copy of the conv weights).
* **One input channel as a matmul** (:func:`conv1d_one_input_channel`): oneDNN runs SEANet's first conv (one input
  channel) channel-first and slowly; gathering the windows (im2col) and one matmul is faster and gives the
  time-major output directly. Training uses it too: its backward is plain autograd of the matmul.
* **Few output channels as a matmul** (:func:`conv1d_few_output_channels`): oneDNN is slow on SEANet's last conv (to
  one channel); one matmul gives every tap's contribution and the taps are summed shifted.
* **A 1x1 conv adds into the residual** (:func:`conv1x1_add_`): ``out += conv(x)`` inside oneDNN's conv with an
  in-place add post-op, ``torch.ops.mkldnn._convolution_pointwise_.binary`` (the op ``torch.compile`` fuses residual
  adds into), so the conv's output, a full-rate tensor of tens of MB, is never made. The op is private: where this
  torch lacks it (or has no oneDNN) the caller falls back to conv, then add.

(The codec itself also overwrites, without autograd, activations that nothing reads again: see
``ResidualUnit.forward``. That is the model's bookkeeping, not a kernel, so it stays there.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "conv1d",
    "conv1d_few_output_channels",
    "conv1d_one_input_channel",
    "conv1x1_add_",
    "conv_transpose1d",
    "inference_weight",
    "time_major",
]


# oneDNN's conv with an in-place add post-op (``other += conv(x)``), the op torch.compile fuses residual adds into;
# a private op, hence the fallback to conv + add where this torch lacks it.
def _fused_conv_add_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise_.binary if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_FUSED_CONV_ADD = _fused_conv_add_op()


# ------------------------------------------------------------------------------------------------------- layout
def time_major(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, L]`` with the same values, stored time-major (``[B, L, C]`` in memory); a no-op when it already is.

    Every conv of the codec runs in this layout: oneDNN's channels-last kernels neither reorder their input nor
    their output, so a conv costs its arithmetic and not two layout copies (about half of a conv's time in the
    plain ``[B, C, L]`` layout). Elementwise ops keep the layout, and the encoder's latent
    ``[B, D, F]`` transposes for free to the channel-last ``[B, F, D]`` the residual VQ takes.
    """
    if x.transpose(1, 2).is_contiguous():
        return x
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def _as_4d(x: torch.Tensor) -> torch.Tensor:
    # [B, C, L] -> [B, C, 1, L], channels-last (a view when x is time-major)
    return time_major(x).unsqueeze(2)


def inference_weight(module: nn.Module, conv: nn.Module) -> torch.Tensor:
    """``conv.weight`` (weight norm applied) as ``[O, I, 1, K]`` channels-last, the layout oneDNN's channels-last
    kernels read; kept on ``module`` for later no-grad calls until a parameter of ``conv`` changes (its storage or
    version), so encoding, decoding and above all streaming small chunks do not redo the weight norm every call.
    The price is a second copy of the conv weights while the model serves inference."""
    try:
        key = tuple((p.data_ptr(), p._version) for p in conv.parameters())
    except RuntimeError:                                  # inference-mode parameters keep no version: do not cache
        key = None
    cached = module.__dict__.get("_inference_weight")
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    weight = conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
    if key is not None:
        module.__dict__["_inference_weight"] = (key, weight)   # a plain attribute: never in the state dict
    return weight


# ---------------------------------------------------------------------------------------------------- convolutions
def conv1d(module: nn.Module, x: torch.Tensor, stride: int, dilation: int, padding: int) -> torch.Tensor:
    """``module.conv`` (a ``Conv1d``, maybe weight-normalized) of ``x [B, C_in, L]`` with ``padding`` zeros on both
    sides -> ``[B, C_out, n = (L + 2 * padding - effective_kernel) // stride + 1]``, time-major; the weight is cached
    on ``module`` (:func:`inference_weight`). For inference (no autograd)."""
    conv = module.conv
    weight = inference_weight(module, conv)                         # [C_out, C_in, 1, K] channels-last
    if conv.in_channels == 1:
        return conv1d_one_input_channel(x, weight.squeeze(2), conv.bias, stride, dilation, padding)
    if conv.out_channels < 4 and stride == 1:
        return conv1d_few_output_channels(x, weight.squeeze(2), conv.bias, dilation, padding)
    y = F.conv2d(_as_4d(x), weight, conv.bias, (1, stride), (0, padding), (1, dilation))
    return y.squeeze(2)                                             # [B, C_out, n]


def conv1d_one_input_channel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, dilation: int,
                             padding: int) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, stride, padding, dilation)`` for ``x [B, 1, L]``, ``weight [C_out, 1, K]``, as
    im2col + one matmul; the output ``[B, C_out, n]`` is time-major.

    SEANet's first conv: oneDNN runs a one-channel input channel-first and slowly, so gather the windows (``K``
    values per output) and make the time-major output with one matmul.
    """
    effective_kernel = (weight.shape[-1] - 1) * dilation + 1
    x = F.pad(x[:, 0], (padding, padding))                          # [B, L + 2p]
    windows = x.unfold(-1, effective_kernel, stride)[..., :: dilation]   # [B, n, K]
    y = torch.addmm(bias, windows.flatten(0, 1), weight[:, 0].t())       # [B * n, C_out]
    return y.view(x.shape[0], -1, weight.shape[0]).transpose(1, 2)


def conv1d_few_output_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int,
                               padding: int) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, 1, padding, dilation)`` (stride 1) for ``weight [C_out, C_in, K]`` with few
    output channels, as one matmul and a shifted sum over the taps; the output ``[B, C_out, n]`` is time-major.

    SEANet's last conv (to one channel): oneDNN is slow with so few outputs, so one matmul gives every tap's
    contribution ``y[t, j] = w_j . x[t]``, and output ``t`` sums ``y[t - p + j * dilation, j]`` over taps ``j``.
    """
    b, c, length = x.shape
    k, o, d = weight.shape[-1], weight.shape[0], dilation
    y = torch.matmul(x.transpose(1, 2), weight.permute(1, 2, 0).reshape(c, k * o)).view(b, length, k, o)
    n = length + 2 * padding - ((k - 1) * d + 1) + 1
    out = bias.expand(b, n, o).clone()                              # [B, n, C_out]
    for j in range(k):
        shift = j * d - padding                                     # input index = output index + shift
        lo, hi = max(0, -shift), min(n, length - shift)
        if lo < hi:
            out[:, lo:hi] += y[:, lo + shift: hi + shift, j]
    return out.transpose(1, 2)


def conv1x1_add_(module: nn.Module, out: torch.Tensor, x: torch.Tensor) -> bool:
    """``out += module.conv(x)`` in place inside oneDNN's conv (an add post-op) for a 1x1, stride-1 ``module.conv``
    (many input channels, float32 on the CPU); the conv's output is never made. For inference (no autograd).

    Returns ``False``, leaving ``out`` alone, where the fused op does not apply (no such op in this torch, another
    device or dtype, an empty input, shapes that do not add up, an ``out`` not stored time-major): the caller then
    adds the conv's output itself.
    """
    conv = module.conv
    fusable = (conv.in_channels > 1 and _FUSED_CONV_ADD is not None and x.device.type == "cpu"
               and x.dtype == torch.float32)
    if fusable and x.shape[-1] and out.shape == (x.shape[0], conv.out_channels, x.shape[-1]) and out.dtype == x.dtype:
        target = out.unsqueeze(2)                                   # [B, C_out, 1, L]
        if target.is_contiguous(memory_format=torch.channels_last):
            _FUSED_CONV_ADD(target, _as_4d(x), inference_weight(module, conv), conv.bias,
                            [0, 0], [1, 1], [1, 1], 1, "add", None, None, [], None)
            return True
    return False


def conv_transpose1d(module: nn.Module, x: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    """``F.conv_transpose1d(x, module.convtr.weight, bias, stride)`` of ``x [B, C_in, T]`` -> ``[B, C_out,
    (T - 1) * stride + kernel]``, time-major, as a channels-last 2-D transposed conv with the weight cached on
    ``module``. For inference (no autograd)."""
    y = F.conv_transpose2d(_as_4d(x), inference_weight(module, module.convtr), bias, stride=(1, stride))
    return y.squeeze(2)
