"""A data set that installs locally, standing in for torchvision's MNIST where nothing can be
downloaded: scikit-learn's bundled handwritten digits (8x8, 1797 images), resized to 28x28 and
normalized like the seed script's `transforms.Normalize([0.1307], [0.3081])`."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from mlusim.errors import ShimError


def digits(train: bool = True, test_fraction: float = 0.2, seed: int = 0, size: int = 28) -> TensorDataset:
    """(image [1, size, size], label) pairs; the split is fixed by `seed`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ShimError("torch_mlu.data.digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.1307) / 0.3081
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(len(y) * (1 - test_fraction))
    idx = perm[:cut] if train else perm[cut:]
    return TensorDataset(x[idx], y[idx])
