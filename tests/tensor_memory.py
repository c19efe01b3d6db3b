"""Peak bytes of live tensors on the CPU, measured (not estimated) for the memory tests.

torch keeps no allocator statistics for the CPU (torch.cuda.max_memory_allocated has no CPU
twin), and the process's resident set size mixes tensors with Python, the allocator's caches
and the libraries. So this counts tensors themselves: a TorchDispatchMode sees every tensor an
op creates, registers its storage once (views share a storage) and a finalizer that fires when
the storage is freed, whoever held it last (a Python variable, autograd's saved tensors, an
optimizer state). Only storages created inside the `with` block count; what existed before
(the weights, say) is the caller's baseline.

    with TensorPeak() as m:
        loss = f(); loss.backward()
    m.peak   # bytes
"""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorPeak(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if storage.nbytes() == 0 or key in self.live:
                    continue
                self.live[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key):
        self.current -= self.live.pop(key, 0)

    def reset_peak(self):
        self.peak = self.current
