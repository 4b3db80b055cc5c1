"""The KV cache: keys and values of past tokens, kept so that decoding does not recompute them.

- :func:`kv_cache_bytes` — THE formula for its size (used by the notebooks, the exercises' checks
  and :attr:`KVCache.nbytes`): 2 (keys and values) x layers x key/value heads x head size x tokens
  x sequences x bytes per number. Only the key/value heads count, which is why grouped-query and
  multi-query attention shrink it.
- :class:`KVCache` — a pre-allocated cache for every layer of a decoder, written in place while
  decoding (no ``torch.cat`` per step) and differentiable when gradients are on (training through
  a cache, prefix tuning).

Create one with ``model.new_kv_cache(batch_size)`` (``utils.model.GPT``).
"""

from __future__ import annotations

import torch

from utils.checks import check_int, check_number

__all__ = ["kv_cache_bytes", "KVCache"]


def kv_cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, tokens: int, batch_size: int = 1,
                   bytes_per_value: float = 2) -> int | float:
    """Bytes of a KV cache: ``2 * n_layer * n_kv_head * head_dim * tokens * batch_size * bytes_per_value``.

    The 2 is keys and values. ``bytes_per_value``: 4 for fp32, 2 for fp16/bf16 (the default),
    1 for int8, 0.5 for 4-bit. Returns an int when the result is a whole number of bytes.
    """
    for name, value in (("n_layer", n_layer), ("n_kv_head", n_kv_head), ("head_dim", head_dim),
                        ("batch_size", batch_size)):
        check_int(name, value, 1)
    check_int("tokens", tokens, 0)
    check_number("bytes_per_value", bytes_per_value, 0, low_open=True)
    total = 2 * n_layer * n_kv_head * head_dim * tokens * batch_size * bytes_per_value
    return int(total) if float(total).is_integer() else total


class KVCache:
    """Pre-allocated key/value cache for all layers of a decoder.

    ``k`` and ``v`` are (n_layer, B, n_kv_head, max_len, head_dim) buffers allocated once; ``length``
    positions are filled. Each attention layer writes its new keys/values at ``[length : length + T]``
    (:meth:`update`) and attends over ``[:length + T]``; the model then calls :meth:`advance`.

    Two ways to write, chosen per call:

    - no gradients needed (decoding, ``torch.no_grad`` / ``inference_mode``): in place into the
      buffers, nothing re-allocated;
    - gradients needed (the new keys require grad, or earlier ones did): out of place, a new
      tensor per layer, so that nothing autograd saved is ever overwritten; gradients then flow
      through everything cached (training through a cache, a learned prefix written into it).

    Padding (batched prompts of different lengths, left-padded): the model stores the padding mask
    of every cached position in ``pad_mask`` (B, max_len) and counts each row's real tokens in
    ``n_real`` (B,) so that new tokens get the right positions.

    :meth:`trim` drops the oldest entries (a sliding window) when the buffer is full. Positions keep
    counting from where they were (``offset`` = positions dropped so far). With RoPE the cached keys
    carry their rotation, and attention scores depend only on position differences, so decoding
    after a trim is exactly attention over the last ``keep`` cached positions (the Mistral-style
    sliding-window cache). It is not bit-equal to re-running the model on the window from scratch
    in a multi-layer model: the kept keys of layers >= 2 were computed while the dropped tokens were
    still visible. With *learned* positions a trim cannot help: positions beyond ``block_size`` do
    not exist, so generation must instead re-prefill the last ``block_size`` tokens into a fresh cache.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        for name, value in (("n_layer", n_layer), ("batch_size", batch_size), ("n_kv_head", n_kv_head),
                            ("max_len", max_len), ("head_dim", head_dim)):
            check_int(name, value, 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float32), got {dtype!r}")
        try:
            device = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must be a torch.device or a name such as 'cpu' or 'cuda', got {device!r}") from exc
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self._k = torch.zeros(shape, device=device, dtype=dtype)
        self._device = self._k.device
        self._v = torch.zeros(shape, device=device, dtype=dtype)
        self._use_buffer_views()
        self._slot_shape = (batch_size, n_kv_head, head_dim)  # what update() accepts (besides T)
        # (n_layer, batch_size, n_kv_head, head_dim): one tuple for the model's per-step check
        self.dims = (n_layer, batch_size, n_kv_head, head_dim)
        self._max_len = max_len
        self.length = 0
        self.offset = 0
        self.pad_mask: torch.Tensor | None = None
        self.n_real: torch.Tensor | None = None

    def _use_buffer_views(self) -> None:
        # one view per layer, made once: indexing self._k[layer, :, :, a:b] on every decoding step
        # costs several view ops per layer, which adds up when a step is ~100 small ops
        # (select, not unbind: unbind's views cannot be written in place while autograd is on)
        n_layer = self._k.shape[0]
        self._k_layers = [self._k[i] for i in range(n_layer)]
        self._v_layers = [self._v[i] for i in range(n_layer)]
        self._out_of_place = False  # True once a layer holds a tensor of its own (gradients were on)

    # -- shape ------------------------------------------------------------------------------------
    @property
    def k(self) -> torch.Tensor:
        """All keys (n_layer, B, n_kv_head, max_len, head_dim) (a fresh stack after out-of-place writes)."""
        return torch.stack(self._k_layers) if self._out_of_place else self._k

    @property
    def v(self) -> torch.Tensor:
        """All values, like :attr:`k`."""
        return torch.stack(self._v_layers) if self._out_of_place else self._v

    @property
    def n_layer(self) -> int:
        return self._k.shape[0]

    @property
    def batch_size(self) -> int:
        return self._k.shape[1]

    @property
    def n_kv_head(self) -> int:
        return self._k.shape[2]

    @property
    def max_len(self) -> int:
        return self._k.shape[3]

    @property
    def head_dim(self) -> int:
        return self._k.shape[4]

    @property
    def dtype(self) -> torch.dtype:
        return self._k.dtype

    @property
    def device(self) -> torch.device:
        return self._k.device

    @property
    def nbytes(self) -> int:
        """Bytes of the key and value buffers: :func:`kv_cache_bytes` at ``max_len`` tokens."""
        return kv_cache_bytes(self.n_layer, self.n_kv_head, self.head_dim, self.max_len, self.batch_size,
                              self._k.element_size())

    @property
    def next_position(self) -> int:
        """Position of the next token for unpadded rows (counts trimmed positions too)."""
        return self.offset + self.length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (f"KVCache(n_layer={self.n_layer}, batch_size={self.batch_size}, n_kv_head={self.n_kv_head}, "
                f"length={self.length}/{self.max_len}, head_dim={self.head_dim}, offset={self.offset}, "
                f"dtype={self.dtype})")

    # -- writing ----------------------------------------------------------------------------------
    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_head, T, head_dim) at [length:length+T] of layer ``layer_idx``; return
        (B, n_kv_head, length + T, head_dim) keys and values: everything cached for that layer."""
        if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor):
            raise TypeError(f"k and v must be tensors, got {type(k).__name__} and {type(v).__name__}")
        if k.dim() != 4:
            raise ValueError(f"k must be (B, n_kv_head, T, head_dim), got shape {tuple(k.shape)}")
        if type(layer_idx) is not int or not 0 <= layer_idx < self.dims[0]:
            raise ValueError(f"layer_idx must be an int in [0, n_layer={self.n_layer}), got {layer_idx!r}")
        B, Hkv, T, hd = k.shape
        start = self.length
        end = start + T
        if end > self._max_len:
            raise ValueError(f"the KV cache is full: {start} cached + {T} new > max_len "
                             f"{self._max_len}; call cache.trim(keep) to drop the oldest positions, or "
                             "allocate a longer cache (model.new_kv_cache(batch_size, max_len=...))")
        if (B, Hkv, hd) != self._slot_shape or v.shape != k.shape:
            raise ValueError(f"k/v of shape {tuple(k.shape)} / {tuple(v.shape)} do not fit the cache "
                             f"(B={self.batch_size}, n_kv_head={self.n_kv_head}, head_dim={self.head_dim})")
        if not (k.is_floating_point() and v.is_floating_point()):
            raise TypeError(f"k and v must be floating point, got {k.dtype} and {v.dtype}")
        if k.device != self._device or v.device != self._device:
            raise ValueError(f"k/v are on {k.device} / {v.device} but the cache is on {self._device}")
        k_layer, v_layer = self._k_layers[layer_idx], self._v_layers[layer_idx]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self._out_of_place):
            # out of place: autograd may have saved the old tensors (earlier steps attended to them)
            L = k_layer.shape[2]
            k_layer = torch.cat([k_layer.narrow(2, 0, start), k.to(k_layer.dtype), k_layer.narrow(2, end, L - end)], 2)
            v_layer = torch.cat([v_layer.narrow(2, 0, start), v.to(v_layer.dtype), v_layer.narrow(2, end, L - end)], 2)
            self._k_layers[layer_idx], self._v_layers[layer_idx] = k_layer, v_layer
            self._out_of_place = True
        else:
            k_layer.narrow(2, start, T).copy_(k)
            v_layer.narrow(2, start, T).copy_(v)
        return k_layer.narrow(2, 0, end), v_layer.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (the model calls this once per forward, after every
        layer has called :meth:`update`)."""
        if type(n) is not int or n < 0 or self.length + n > self._max_len:
            raise ValueError(f"n must be an int in [0, max_len - length = {self.max_len - self.length}], got {n!r}")
        self.length += n

    def trim(self, keep: int) -> None:
        """Keep only the newest ``keep`` positions (moved to the front of the buffer)."""
        if type(keep) is not int or not 0 <= keep <= self.length:
            raise ValueError(f"keep must be an int in [0, length={self.length}], got {keep!r}")
        drop = self.length - keep
        if drop == 0:
            return
        if self._out_of_place:
            for layers in (self._k_layers, self._v_layers):
                for i, t in enumerate(layers):
                    layers[i] = torch.cat([t.narrow(2, drop, keep), t.new_zeros(*t.shape[:2], t.shape[2] - keep,
                                                                              t.shape[3])], 2)
        else:
            self._k[:, :, :, :keep] = self._k[:, :, :, drop:self.length].clone()
            self._v[:, :, :, :keep] = self._v[:, :, :, drop:self.length].clone()
        if self.pad_mask is not None:
            self.pad_mask[:, :keep] = self.pad_mask[:, drop:self.length].clone()
        self.length = keep
        self.offset += drop

    def reset(self) -> None:
        """Empty the cache (the buffers are kept for reuse; out-of-place layers are released)."""
        self.length = self.offset = 0
        self.pad_mask = self.n_real = None
        if self._out_of_place:
            self._use_buffer_views()

    def _enable_padding(self) -> None:
        if self.pad_mask is None:
            B, L = self.batch_size, self.max_len
            self.pad_mask = torch.ones(B, L, dtype=torch.bool, device=self._k.device)
            self.n_real = torch.full((B,), self.offset + self.length, dtype=torch.long, device=self._k.device)
