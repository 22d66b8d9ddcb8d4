"""Train a tiny PyTorch model from a headrace stream (stream.to_torch()).

Needs torch (pip install "headrace[torch]"). Run: python examples/sampling_torch.py
"""

import numpy as np
import torch

import headrace as hr

rng = np.random.default_rng(0)
w_true = rng.standard_normal(8).astype(np.float32)


def examples(n):
    local = np.random.default_rng(n)
    for _ in range(n):
        x = local.standard_normal(8).astype(np.float32)
        yield {"x": x, "y": np.float32(x @ w_true)}


# The stream batches; its stages are the workers, so the DataLoader needs none.
stream = hr.from_iterable(hr.Streamer(examples, 2048)).batch(64)
loader = torch.utils.data.DataLoader(stream.to_torch(), batch_size=None, num_workers=0)

model = torch.nn.Linear(8, 1, bias=False)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    for batch in loader:
        loss = torch.nn.functional.mse_loss(model(batch["x"]).squeeze(1), batch["y"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: loss {loss.item():.4f}")
