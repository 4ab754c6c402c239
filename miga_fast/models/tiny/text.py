"""The bundled model's text encoder: a tiny transformer over the procedural world's vocabulary."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .world import VOCABULARY, parse_prompt

PAD = 0
TOKEN_IDS = {w: i + 1 for i, w in enumerate(VOCABULARY)}


def tokenize(prompt: str, length: int) -> Tensor:
    """Prompt -> token ids [length] (0 = padding). "" is the unconditional (CFG) prompt.

    A non-empty prompt must follow the world's grammar; unknown words raise a ConfigError naming them.
    """
    ids = torch.zeros(length, dtype=torch.long)
    if prompt.strip():
        parse_prompt(prompt)
        words = prompt.lower().replace(",", " ").split()
        ids[: len(words)] = torch.tensor([TOKEN_IDS[w] for w in words[:length]])
    return ids


class TinyTextEncoder(nn.Module):
    """tokens [B, S] -> embeddings [B, S, dim]: word + position embedding, one transformer layer."""

    def __init__(self, dim: int = 64, length: int = 12, heads: int = 4):
        super().__init__()
        self.length = length
        self.words = nn.Embedding(len(VOCABULARY) + 1, dim)
        self.positions = nn.Parameter(torch.zeros(length, dim))
        self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.words(tokens) + self.positions
        return self.norm(self.layer(h))

    def encode(self, prompts: list[str]) -> Tensor:
        """Prompts -> [len(prompts), length, dim] on the module's device."""
        tokens = torch.stack([tokenize(p, self.length) for p in prompts]).to(self.positions.device)
        return self(tokens)
