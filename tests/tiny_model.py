"""The tests' tiny random bundled-format model: one spec, saved to disk and loaded through the real loader."""

import torch

from miga_fast.models.tiny.bundle import TinySpec, TinyVideoModel

PROMPT = "a red circle moving left on a striped blue background"
# A one-block DiT on 8x8 frames: renders at ~50 frames/s on this CPU
TINY = TinySpec(frame_size=8, text_dim=16, dit=dict(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=12,
                                                    in_channels=3, out_channels=3, text_dim=16, freq_dim=16,
                                                    ffn_dim=32, num_layers=1))


def save_tiny(path, seed=0):
    """Random weights of TINY (from `seed`) saved to `path`; returns `path`."""
    torch.manual_seed(seed)
    TinyVideoModel(TINY).save(path)
    return path
