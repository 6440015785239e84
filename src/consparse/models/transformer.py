"""A Hugging Face transformer encoder with an MLP classification head (``model=distilbert``).

The encoder comes from the ``transformers`` package: pretrained weights from the Hub
(``pretrained: true``, the hub id ``hub_id``; the Hub cache is used when offline) or a randomly
initialised model of a given config (``pretrained: false``; ``config`` a dict of that model type's
config keys, e.g. a tiny DistilBERT for tests). The head is DistilBERT's own sequence-classification
head, ``Linear(h, h) -> ReLU -> Dropout -> Linear(h, classes)`` on the first token's final hidden
state, kept as a separate Linear/ReLU chain so that ``method=implicit_lasso`` can convert it to an
implicit model and refit it by state matching on the encoder's features
(``consparse.methods.implicit_lasso.head``).

Inputs are one tensor per batch, ``(batch, 2, length)`` int64: token ids, then the attention mask
(``dataset=newsgroups20_tokens``), so that every loader and metric of the platform keeps its
``(inputs, targets)`` batches. The platform's shape-only probes (MAC counting, latency) send random
floating-point tensors of that shape; those are mapped to valid token ids, attending to every token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from consparse.errors import ParameterError

TOKEN_INPUT = "a (2, length) token input: dataset=newsgroups20_tokens"


def _encoder(hub_id: str, pretrained: bool, config: Mapping[str, Any] | None) -> nn.Module:
    """The encoder, from the Hub or from a config; ParameterError (before any compute) when unavailable."""
    from transformers import AutoConfig, AutoModel

    if pretrained:
        if config:
            raise ParameterError("config", "a config is only used with model.pretrained=false (random initialisation)")
        try:
            return AutoModel.from_pretrained(hub_id)
        except OSError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ParameterError(
                "hub_id",
                f"cannot load the pretrained weights of '{hub_id}' from the Hugging Face Hub or its cache ({first}); "
                "run once with network access (HF_HUB_OFFLINE unset) to fill the cache, point HF_HOME at a cache "
                "that holds it, or use model.pretrained=false for a randomly initialised model",
            ) from None
    if not config or "model_type" not in config:
        raise ParameterError("config", f"model.pretrained=false needs a config dict with a model_type, got {config!r}")
    options = dict(config)
    model_type = options.pop("model_type")
    try:
        return AutoModel.from_config(AutoConfig.for_model(model_type, **options))
    except (ValueError, TypeError, KeyError) as error:
        raise ParameterError("config", f"not a valid {model_type!r} config: {error}") from None


class TransformerClassifier(nn.Module):
    """A transformer encoder, its first token's features, and a Linear/ReLU classification head.

    Args:
        input_shape: ``[2, length]`` (token ids and attention mask) from the dataset.
        num_classes: number of classes.
        hub_id: the Hugging Face Hub model id (``pretrained: true``).
        pretrained: load the Hub weights (true) or initialise ``config`` randomly (false).
        config: with ``pretrained: false``, the encoder's config keys, ``model_type`` included.
        dropout: dropout of the head (DistilBERT's ``seq_classif_dropout``: 0.2).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hub_id: str = "distilbert-base-uncased",
        pretrained: bool = True,
        config: Mapping[str, Any] | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        shape = [int(d) for d in input_shape]
        if len(shape) != 2 or shape[0] != 2:
            raise ParameterError("", f"a transformer needs {TOKEN_INPUT}; the dataset gives inputs of shape {shape}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ParameterError("dropout", f"got {dropout!r}; allowed: [0, 1)")
        self.encoder = _encoder(hub_id, bool(pretrained), config)
        width = int(self.encoder.config.hidden_size)
        self.vocab_size = int(self.encoder.config.vocab_size)
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(float(dropout)), nn.Linear(width, num_classes))

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids and attention mask of a batch (a floating-point probe: valid ids, no mask = attend to all)."""
        if x.is_floating_point():
            return (x[:, 0].abs() * 1000).long() % self.vocab_size, None
        return x[:, 0], x[:, 1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The first token's final hidden state: the head's input."""
        ids, mask = self.tokens(x)
        return self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
