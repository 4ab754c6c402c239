"""Text encoders on tiny random weights and tiny local tokenizers (no hub, no open_clip)."""

import json
import types

import pytest
import torch
from torch import nn

from miga_fast.models.text import OpenCLIPTextEncoder, OpenCLIPTextModel, UMT5TextEncoder, load_clip_tokenizer

WIDTH, LAYERS, HEADS, CONTEXT = 32, 3, 2, 12
CHARS = "!\"#$%&'()*+,-./0123456789:;<=>?@[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"  # id 0 is "!", as in CLIP's vocab
MERGES = ["r e", "re d</w>", "c a", "ca t</w>"]
WORDS = "a red circle moving left on striped blue background cat dog".split()


def write_clip_tokenizer(folder):
    """A tiny byte-level CLIP BPE: printable ASCII (+ '</w>' forms), a few merges, the two special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab.update({c + "</w>": len(CHARS) + i for i, c in enumerate(CHARS)})
    for m in MERGES:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return len(vocab)


def openclip_checkpoint(vocab: int, prefix: str = "cond_stage_model.model.") -> dict:
    """Random open_clip text-tower weights under `prefix`, plus keys VideoCrafter2 does not use."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in OpenCLIPTextModel(vocab, CONTEXT, WIDTH, LAYERS, HEADS).state_dict().items()}
    for k in list(state):
        if k.endswith("bias") or "ln_" in k:  # the tiny model initialises these to constants
            state[k] = torch.randn_like(state[k]) * 0.1 + (1.0 if k.endswith("weight") else 0.0)
    state["text_projection"] = torch.randn(WIDTH, WIDTH)
    state["logit_scale"] = torch.tensor(4.6)
    state["visual.conv1.weight"] = torch.randn(4, 3, 2, 2)
    return {prefix + k: v for k, v in state.items()}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    vocab = write_clip_tokenizer(root / "tokenizer")
    ckpt = openclip_checkpoint(vocab)
    torch.save({"state_dict": ckpt}, root / "text.ckpt")
    state = torch.load(root / "text.ckpt", weights_only=True)["state_dict"]
    prefix = "cond_stage_model.model."
    model = OpenCLIPTextModel.from_state_dict({k[len(prefix):]: v for k, v in state.items()}, heads=HEADS)
    return model, load_clip_tokenizer(root / "tokenizer"), state


def reference_penultimate(state: dict, tokens: torch.Tensor, skip: int = 1) -> torch.Tensor:
    """FrozenOpenCLIPEmbedder.encode_with_transformer, literally: LND layout, nn.MultiheadAttention with
    open_clip's float attn_mask, blocks but the last `skip`, ln_final."""
    p = "cond_stage_model.model."

    def ln(x, name):
        return nn.functional.layer_norm(x, (WIDTH,), state[p + name + ".weight"], state[p + name + ".bias"])

    x = state[p + "token_embedding.weight"][tokens] + state[p + "positional_embedding"]
    x = x.permute(1, 0, 2)  # NLD -> LND
    mask = torch.empty(CONTEXT, CONTEXT).fill_(float("-inf")).triu_(1)
    for i in range(LAYERS - skip):
        b = f"{p}transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(WIDTH, HEADS)
        mha.load_state_dict({k: state[b + "attn." + k] for k in mha.state_dict()})
        h = ln(x, f"transformer.resblocks.{i}.ln_1")
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = ln(x, f"transformer.resblocks.{i}.ln_2")
        h = nn.functional.gelu(nn.functional.linear(h, state[b + "mlp.c_fc.weight"], state[b + "mlp.c_fc.bias"]))
        x = x + nn.functional.linear(h, state[b + "mlp.c_proj.weight"], state[b + "mlp.c_proj.bias"])
    return ln(x.permute(1, 0, 2), "ln_final")


def test_clip_tokens_follow_open_clip(clip):
    model, tok, _ = clip
    enc = OpenCLIPTextEncoder(model, tok)
    sot, eot = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    ids = enc.tokenize("A  red cat!").tolist()
    assert len(ids) == CONTEXT
    assert tok.convert_ids_to_tokens(ids[:5]) == ["<|startoftext|>", "a</w>", "red</w>", "cat</w>", "!</w>"]
    assert ids[5:] == [eot] + [0] * (CONTEXT - 6)  # open_clip pads with 0 after the end token
    assert enc.tokenize("").tolist() == [sot, eot] + [0] * (CONTEXT - 2)
    long = enc.tokenize("red " * 20).tolist()  # truncated: the end token stays last
    assert len(long) == CONTEXT and long[0] == sot and long[-1] == eot and 0 not in long


@torch.no_grad()
@pytest.mark.parametrize("layer,skip", [("penultimate", 1), ("last", 0)])
def test_openclip_matches_literal_frozen_openclip(clip, layer, skip):
    model, tok, state = clip
    enc = OpenCLIPTextEncoder(model, tok, layer=layer)
    for prompt in ("a red cat moving left", ""):
        out = enc.encode(prompt)
        expected = reference_penultimate(state, enc.tokenize(prompt)[None], skip)
        assert out.shape == (1, CONTEXT, WIDTH)
        err = (out - expected).abs().max().item()
        print(f"OpenCLIP {layer} vs literal FrozenOpenCLIPEmbedder ({prompt!r}): max abs err {err:.1e}")
        assert err < 1e-5


def test_openclip_cache_and_errors(clip):
    model, tok, state = clip
    enc = OpenCLIPTextEncoder(model, tok)
    a = enc.encode("a red cat")
    assert enc.encode("a red cat") is a and enc.encoded == 1
    enc.encode("a cat")
    assert enc.encoded == 2
    text = {k[len("cond_stage_model.model."):]: v for k, v in state.items()}
    bad = dict(text, **{"transformer.resblocks.1.mlp.c_proj.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"1 wrong-shape .*resblocks.1.mlp.c_proj.bias"):
        OpenCLIPTextModel.from_state_dict(bad, heads=HEADS)
    del bad["transformer.resblocks.1.mlp.c_proj.bias"]
    with pytest.raises(ValueError, match=r"1 missing .*resblocks.1.mlp.c_proj.bias"):
        OpenCLIPTextModel.from_state_dict(bad, heads=HEADS)
    with pytest.raises(ValueError, match="no OpenCLIP text-tower weight 'token_embedding.weight'"):
        OpenCLIPTextModel.from_state_dict({})
    with pytest.raises(ValueError, match="layer must be one of"):
        OpenCLIPTextEncoder(model, tok, layer="pooled")


def test_clip_tokenizer_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks \['vocab.json', 'merges.txt'\]"):
        load_clip_tokenizer(tmp_path)


# ----------------------------------------------------------------------------------------------- umT5
def write_umt5(folder, d_model: int = 16):
    """A tiny umT5 encoder (transformers save_pretrained) and a word-level T5-style tokenizer ('</s>' appended)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder / "tokenizer")
    config = UMT5Config(vocab_size=len(vocab), d_model=d_model, d_kv=4, d_ff=32, num_layers=2, num_heads=2,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    UMT5EncoderModel(config).eval().save_pretrained(folder / "text_encoder")


@pytest.fixture(scope="module")
def umt5_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_text")
    write_umt5(root)
    return root


@torch.no_grad()
def test_umt5_matches_diffusers_wan_pipeline(umt5_folder):
    from diffusers import WanPipeline

    enc = UMT5TextEncoder.from_pretrained(umt5_folder / "text_encoder", umt5_folder / "tokenizer", max_length=10)
    fake = types.SimpleNamespace(tokenizer=enc.tokenizer, text_encoder=enc.model)
    for prompt in ("a red  circle moving left", "", "a " * 30):
        out = enc.encode(prompt)
        expected = WanPipeline._get_t5_prompt_embeds(fake, prompt, max_sequence_length=10, device=torch.device("cpu"),
                                                     dtype=torch.float32)
        assert out.shape == (1, 10, 16) and torch.equal(out, expected)
    out = enc.encode("a red circle")  # 3 words + </s>: the rest is zero
    assert out[0, :4].abs().sum(-1).gt(0).all() and out[0, 4:].abs().max() == 0
    assert enc.encode("a red circle") is out and enc.encoded == 4


def test_umt5_missing_folder(tmp_path, umt5_folder):
    with pytest.raises(FileNotFoundError, match="umT5 text_encoder folder .* does not exist"):
        UMT5TextEncoder.from_pretrained(tmp_path / "nope", umt5_folder / "tokenizer")
