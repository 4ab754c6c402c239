"""Text encoders of the real checkpoints, loaded from local files; `encode(prompt) -> [1, S, D]`, cached.

  * `OpenCLIPTextEncoder`: VideoCrafter2's ``FrozenOpenCLIPEmbedder`` (OpenCLIP ViT-H/14 text tower,
    layer "penultimate"): 77 tokens -> [1, 77, 1024]. Our own module, parameters named as the checkpoint's
    ``cond_stage_model.model.*``; the BPE tokenizer is transformers' ``CLIPTokenizer`` (open_clip is not needed).
  * `UMT5TextEncoder`: Wan2.1's umT5-XXL encoder (transformers ``UMT5EncoderModel``) as diffusers'
    ``WanPipeline`` runs it: 512 tokens, embeddings past each prompt's length set to 0 -> [1, 512, 4096].

The bundled model's tiny text encoder lives in `models/tiny/text.py`.
"""

from __future__ import annotations

import abc
import html
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CachedTextEncoder(abc.ABC):
    """`encode(prompt)` computes `_encode(prompt)` once per distinct prompt and keeps the result.

    The cache is unbounded: a render uses a handful of prompts (the prompt, its schedule, the negative one).
    `encoded` counts actual encoder runs.
    """

    def __init__(self):
        self._cache: dict[str, Tensor] = {}
        self.encoded = 0

    def encode(self, prompt: str) -> Tensor:
        """prompt -> embeddings [1, S, D] on the encoder's device and dtype."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str (got {type(prompt).__name__})")
        hit = self._cache.get(prompt)
        if hit is None:
            with torch.no_grad():
                hit = self._cache[prompt] = self._encode(prompt)
            self.encoded += 1
        return hit

    @abc.abstractmethod
    def _encode(self, prompt: str) -> Tensor: ...


def _clean(text: str) -> str:
    """The prompt cleaning of open_clip's tokenizer and diffusers' WanPipeline: ftfy (when installed),
    HTML entities unescaped twice, whitespace runs collapsed, ends stripped."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


# ----------------------------------------------------------------------------------------------- OpenCLIP
class _MultiheadAttention(nn.Module):
    """Causal self-attention with ``nn.MultiheadAttention``'s parameter names (packed in_proj, out_proj)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, S, D] -> [B, S, D]; token i attends to tokens <= i (open_clip's attn_mask)."""
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _LayerNorm(nn.LayerNorm):
    """LayerNorm in fp32, result in the input's dtype (open_clip's LayerNorm casts back too)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class _ResidualAttentionBlock(nn.Module):
    """open_clip ``ResidualAttentionBlock``: x + attn(ln_1 x), then x + mlp(ln_2 x) with exact GELU."""

    def __init__(self, width: int, heads: int, mlp_width: int):
        super().__init__()
        self.ln_1 = _LayerNorm(width)
        self.attn = _MultiheadAttention(width, heads)
        self.ln_2 = _LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, mlp_width), gelu=nn.GELU(), c_proj=nn.Linear(mlp_width, width)))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int):
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(width, heads, mlp_width) for _ in range(layers))


class OpenCLIPTextModel(nn.Module):
    """OpenCLIP text tower: tokens [B, context] -> token features [B, context, width].

    ViT-H/14: vocab 49408, context 77, width 1024, 24 layers, 16 heads, MLP 4096. Parameter names are
    open_clip's (the checkpoint's ``cond_stage_model.model.*`` minus the visual tower, text_projection and
    logit_scale, which VideoCrafter2's penultimate-layer features do not use).
    """

    LAYERS = {"last": 0, "penultimate": 1}  # FrozenOpenCLIPEmbedder.layer_idx: blocks skipped at the end

    def __init__(self, vocab_size: int = 49408, context_length: int = 77, width: int = 1024, layers: int = 24,
                 heads: int = 16, mlp_width: int | None = None):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.transformer = _Transformer(width, layers, heads, mlp_width or 4 * width)
        self.ln_final = _LayerNorm(width)

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def forward(self, tokens: Tensor, layer: str = "penultimate") -> Tensor:
        """tokens [B, context] -> ln_final(output of all blocks but the last `LAYERS[layer]`) [B, context, width]."""
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {tuple(self.LAYERS)} (got {layer!r})")
        x = self.token_embedding(tokens) + self.positional_embedding.to(self.token_embedding.weight.dtype)
        blocks = self.transformer.resblocks
        for block in blocks[: len(blocks) - self.LAYERS[layer]]:
            x = block(x)
        return self.ln_final(x)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], heads: int | None = None, where: str = "state dict",
                        dtype: torch.dtype | None = None) -> OpenCLIPTextModel:
        """Build from open_clip text-tower weights (no prefix); sizes are read from the shapes.

        `heads` is not stored in the weights: default width // 64 (every open_clip text tower has 64-wide heads).
        Missing or wrongly shaped weights raise one ValueError naming them; other keys are ignored.
        """
        for key in ("token_embedding.weight", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight",
                    "transformer.resblocks.0.mlp.c_fc.weight"):
            if key not in state:
                raise ValueError(f"{where}: no OpenCLIP text-tower weight {key!r}")
        vocab, width = state["token_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
        heads = heads or max(1, width // 64)
        if width % heads:
            raise ValueError(f"{where}: text width {width} is not divisible by heads={heads}")
        with torch.device("meta"):
            model = cls(vocab, state["positional_embedding"].shape[0], width, layers, heads,
                        state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        _check_state(where, "OpenCLIP text tower", expected, {k: tuple(v.shape) for k, v in state.items()})
        dtype = dtype or torch.float32
        model.load_state_dict({k: state[k].to(dtype) for k in expected}, strict=True, assign=True)
        return model.eval()


def _check_state(where: str, what: str, expected: dict[str, tuple], found: dict[str, tuple]) -> None:
    """One ValueError naming missing and wrongly shaped weights (a few of each); extra keys are fine."""
    missing = sorted(expected.keys() - found.keys())
    shapes = [f"{k}: {found[k]} vs {expected[k]}" for k in sorted(expected.keys() & found.keys())
              if found[k] != expected[k]]
    problems = [f"{len(items)} {kind} (e.g. {items[:3]})" for kind, items in (("missing", missing),
                                                                               ("wrong-shape", shapes)) if items]
    if problems:
        raise ValueError(f"{where}: {what} weights do not match: " + "; ".join(problems))


def load_clip_tokenizer(folder: str | Path):
    """transformers ``CLIPTokenizer`` from a local folder holding vocab.json and merges.txt."""
    folder = Path(folder)
    missing = [n for n in ("vocab.json", "merges.txt") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CLIP tokenizer folder {folder} lacks {missing}: it needs vocab.json and merges.txt "
                                "(the OpenCLIP/CLIP BPE, e.g. the tokenizer/ folder of stable-diffusion-2-1)")
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


class OpenCLIPTextEncoder(CachedTextEncoder):
    """VideoCrafter2's FrozenOpenCLIPEmbedder: prompt -> OpenCLIP token features [1, 77, width].

    Tokens as ``open_clip.tokenize``: start token, BPE of the cleaned lower-cased prompt, end token, truncated
    to the context length with the end token kept last, padded with id 0. (Without ftfy installed, prompts
    are not ftfy-fixed; plain-ASCII prompts tokenize identically either way.)
    """

    def __init__(self, model: OpenCLIPTextModel, tokenizer, layer: str = "penultimate"):
        super().__init__()
        if layer not in OpenCLIPTextModel.LAYERS:
            raise ValueError(f"layer must be one of {tuple(OpenCLIPTextModel.LAYERS)} (got {layer!r})")
        self.model, self.tokenizer, self.layer = model.eval(), tokenizer, layer
        vocab = model.token_embedding.num_embeddings
        if len(tokenizer) > vocab:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the text tower's vocabulary is {vocab}: "
                             "they do not belong together")

    def tokenize(self, prompt: str) -> Tensor:
        """prompt -> token ids [context_length] (int64)."""
        n = self.model.context_length
        ids = self.tokenizer(_clean(prompt))["input_ids"]  # [start, ..., end]
        if len(ids) > n:
            ids = ids[:n]
            ids[-1] = self.tokenizer.eos_token_id
        return torch.tensor(ids + [0] * (n - len(ids)), dtype=torch.long)

    def _encode(self, prompt: str) -> Tensor:
        tokens = self.tokenize(prompt)[None].to(self.model.token_embedding.weight.device)
        return self.model(tokens, self.layer)


# ----------------------------------------------------------------------------------------------- umT5
class UMT5TextEncoder(CachedTextEncoder):
    """Wan2.1's text encoder, exactly as diffusers ``WanPipeline._get_t5_prompt_embeds``:
    tokens padded/truncated to `max_length` (512 in WanPipeline.__call__), attention mask on the prompt,
    last hidden state with every position past the prompt's length set to 0 -> [1, max_length, d_model]."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 512):
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1 (got {max_length})")
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length

    def _encode(self, prompt: str) -> Tensor:
        inputs = self.tokenizer([_clean(prompt)], padding="max_length", max_length=self.max_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = inputs.input_ids.to(device), inputs.attention_mask.to(device)
        out = self.model(ids, mask).last_hidden_state
        length = int(mask.gt(0).sum())
        out[:, length:] = 0
        return out

    @classmethod
    def from_pretrained(cls, text_encoder: str | Path, tokenizer: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, max_length: int = 512) -> UMT5TextEncoder:
        """Load from local transformers folders (a diffusers Wan folder's text_encoder/ and tokenizer/)."""
        for name, folder in (("text_encoder", text_encoder), ("tokenizer", tokenizer)):
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"umT5 {name} folder {folder} does not exist")
        from transformers import AutoTokenizer, UMT5EncoderModel

        model = UMT5EncoderModel.from_pretrained(str(text_encoder), dtype=dtype, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
        return cls(model.to(device), tok, max_length)
