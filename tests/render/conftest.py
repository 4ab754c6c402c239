"""A tiny random bundled-format model saved to disk, loaded through the real loader (renders at ~50 frames/s)."""

import pytest
import torch

from miga_fast.models.tiny.bundle import TinySpec, TinyVideoModel

PROMPT = "a red circle moving left on a striped blue background"
TINY = TinySpec(frame_size=8, text_dim=16, dit=dict(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=12,
                                                    in_channels=3, out_channels=3, text_dim=16, freq_dim=16,
                                                    ffn_dim=32, num_layers=1))


def save_tiny(path, seed=0):
    torch.manual_seed(seed)
    TinyVideoModel(TINY).save(path)
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny.safetensors")
