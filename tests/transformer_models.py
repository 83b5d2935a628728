"""A small BERT-style encoder with the activation outliers of real transformers, for the
transformer PTQ tests (SmoothQuant, int4 weights, mixed precision): fast, no package needed."""

import torch

from qcompiler.examples import models
from qcompiler.frontends.torch_export.capture import trace


def outlier_encoder(seed: int = 0, outlier: float = 40.0):
    """(graph, calibration batches, held-out batches) of `models.BertStyle` (2 layers, 32 wide)
    whose layer_norm gammas blow three channels up by `outlier`, as pretrained transformers'
    do (Dettmers et al. 2022; Xiao et al. 2023, fig. 4)."""
    model, (ids,) = models.bert_style(batch=4, seed=seed)
    channels = [1, 7, 20]
    with torch.no_grad():
        # Not the last layer_norm: the classifier reads it through tanh, which no linear
        # scale can cross.
        norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)][:-1]
        for module in norms:
            module.weight[channels] *= outlier
        # The readers' weights are small on those channels (so attention scores stay sane).
        for layer in model.layers:
            for linear in (layer.query, layer.key, layer.value, layer.intermediate):
                linear.weight[:, channels] /= outlier
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, 100, ids.shape, generator=generator) for _ in range(6)]
    return trace(model, (ids,)), batches[:4], batches[4:]
