"""`miga-fast render` arguments: defaults resolve to the model's own values, --size / --tokenizer /
--negative-prompt reach the pipeline. No real rendering: the engine and the video writer are stand-ins."""

import dataclasses

import pytest
import torch

import miga_fast.pipeline as pipeline
import miga_fast.render as render
import miga_fast.runtime.factory as factory
from miga_fast.cli import build_parser, main
from miga_fast.pipeline import VideoGenerator

PROMPT = "a red circle moving left on a striped blue background"


class FakeEngine:
    """Records the Engine's arguments and yields zero latents of the requested shape."""

    calls: list = []

    def __init__(self, denoise, solver, cfg, latent_shape, **kw):
        self.latent_shape = latent_shape
        self.mode, self.mode_why = kw.get("mode"), {}
        FakeEngine.calls.append(dict(kw, latent_shape=latent_shape))

    def run(self, num_latents, on_event=None, resume=None):
        for _ in range(num_latents):
            yield torch.zeros(self.latent_shape)

    def set_condition(self, cond, uncond):
        pass


class FakeWriter:
    """Records the VideoWriter's fps and scale; writes nothing."""

    calls: list = []

    def __init__(self, path, fps=12, scale=1):
        FakeWriter.calls.append({"path": path, "fps": fps, "scale": scale})
        self.frames = []

    def append(self, frame):
        self.frames.append(frame)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def fakes(monkeypatch):
    """Engine + VideoWriter stand-ins in the pipeline; render()/stream() themselves run for real."""
    FakeEngine.calls, FakeWriter.calls = [], []
    monkeypatch.setattr(factory, "Engine", FakeEngine)
    monkeypatch.setattr(render, "VideoWriter", FakeWriter)
    return FakeEngine.calls, FakeWriter.calls


@pytest.fixture
def render_spy(monkeypatch):
    """VideoGenerator.render replaced by a recorder of its arguments (nothing is rendered)."""
    calls = []

    def fake_render(self, path, prompt, frames=256, **kw):
        calls.append(dict(kw, path=path, prompt=prompt, frames=frames, generator=self))
        return pipeline.RenderResult(path, frames, 1.0)

    monkeypatch.setattr(VideoGenerator, "render", fake_render)
    return calls


@pytest.fixture(scope="module")
def bundled():
    return pipeline.load_default()


@pytest.fixture
def load_spy(monkeypatch, bundled):
    """miga_fast.pipeline.load recording its arguments and returning the bundled model."""
    calls = []

    def fake_load(path, device="cpu", dtype=torch.float32, **kw):
        calls.append(dict(kw, path=path, device=device, dtype=dtype))
        return bundled

    monkeypatch.setattr(pipeline, "load", fake_load)
    return calls


def _one_line_error(capsys, argv, *needles):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("miga-fast: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_render_defaults_are_none_in_the_parser():
    args = build_parser().parse_args(["render", PROMPT])
    assert (args.guidance, args.fps, args.scale, args.size) == (None, None, None, None)
    assert (args.negative_prompt, args.tokenizer) == (None, None)


def test_render_defaults_resolve_to_the_bundled_models_values(fakes, tmp_path, capsys):
    """Same as the former fixed defaults --guidance 4 --fps 12 --scale 4, now taken from the bundle."""
    engines, writers = fakes
    assert main(["render", PROMPT, "--frames", "3", "-o", str(tmp_path / "o.gif")]) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    assert len(engines) == 1 and engines[0]["guidance_scale"] == 4.0
    assert engines[0]["latent_shape"] == (3, 32, 32)  # bundled 32x32 pixel-space frames
    assert writers == [{"path": tmp_path / "o.gif", "fps": 12, "scale": 4}]


def test_render_defaults_resolve_to_another_models_values(fakes, monkeypatch, bundled, tmp_path):
    """A model with other defaults (as Wan2.1's: CFG 5, 16 fps, no upscaling, a negative prompt) keeps them."""
    engines, writers = fakes
    bundle = dataclasses.replace(bundled.bundle, guidance_scale=5.0, fps=16, render_scale=1,
                                 negative_prompt="a blue square moving up on a plain red background")
    gen = VideoGenerator(bundle)
    monkeypatch.setattr(pipeline, "load", lambda *a, **kw: gen)
    encoded = []
    monkeypatch.setattr(VideoGenerator, "encode", lambda self, prompt: encoded.append(prompt) or torch.zeros(1, 2, 3))
    assert main(["render", PROMPT, "--frames", "2", "--model", str(tmp_path), "-o", str(tmp_path / "o.gif")]) == 0
    assert engines[0]["guidance_scale"] == 5.0
    assert writers[0]["fps"] == 16 and writers[0]["scale"] == 1
    assert encoded == [PROMPT, bundle.negative_prompt]


def test_render_flags_override_the_model(fakes, tmp_path):
    engines, writers = fakes
    assert main(["render", PROMPT, "--frames", "2", "-o", str(tmp_path / "o.gif"), "--guidance", "1.5",
                 "--fps", "24", "--scale", "2", "--size", "16x24"]) == 0
    assert engines[0]["guidance_scale"] == 1.5 and engines[0]["latent_shape"] == (3, 16, 24)
    assert writers[0]["fps"] == 24 and writers[0]["scale"] == 2


def test_render_passes_none_for_the_models_defaults(render_spy, tmp_path):
    assert main(["render", PROMPT, "-o", str(tmp_path / "o.mp4")]) == 0
    (kw,) = render_spy
    assert all(kw[k] is None for k in ("guidance_scale", "fps", "scale", "size", "negative_prompt")), kw


@pytest.mark.parametrize("size,expected", [("480x832", (480, 832)), ("64X128", (64, 128)), (" 32 x 16 ", (32, 16))])
def test_render_size_reaches_render(render_spy, tmp_path, size, expected):
    assert main(["render", PROMPT, "-o", str(tmp_path / "o.mp4"), "--size", size]) == 0
    assert render_spy[0]["size"] == expected


@pytest.mark.parametrize("size", ["abc", "480", "480x", "x832", "0x64", "64x0", "-8x8", "480x832x2", "4.5x8",
                                  "480,832", "", "²x8"])
def test_render_bad_size_form_is_one_line(capsys, monkeypatch, tmp_path, size):
    loads = []
    monkeypatch.setattr(pipeline, "load", lambda *a, **kw: loads.append(a))
    monkeypatch.setattr(pipeline, "load_default", lambda *a, **kw: loads.append(a))
    err = _one_line_error(capsys, ["render", PROMPT, "-o", str(tmp_path / "o.mp4"), f"--size={size}"],
                          "--size", "HxW", "multiples of the model's size multiple")
    assert err.rstrip().endswith(f"(got {size!r})")
    assert loads == []  # rejected before the model is loaded


def test_render_size_not_a_multiple_is_one_line(capsys, render_spy, tmp_path):
    _one_line_error(capsys, ["render", PROMPT, "-o", str(tmp_path / "o.mp4"), "--size", "30x32"],
                    "--size", "HxW", "multiples of 4", "default 32x32", "'30x32'")
    assert render_spy == []


def test_render_tokenizer_reaches_load(load_spy, render_spy, tmp_path):
    assert main(["render", PROMPT, "-o", str(tmp_path / "o.mp4"), "--model", "vc2/model.ckpt",
                 "--tokenizer", "clip-tok", "--dtype", "bfloat16"]) == 0
    assert load_spy == [{"path": "vc2/model.ckpt", "device": "cpu", "dtype": torch.bfloat16,
                         "tokenizer": "clip-tok"}]
    assert len(render_spy) == 1


def test_render_without_tokenizer_passes_none(load_spy, render_spy, tmp_path):
    assert main(["render", PROMPT, "-o", str(tmp_path / "o.mp4"), "--model", "vc2/model.ckpt"]) == 0
    assert load_spy[0]["tokenizer"] is None


def test_render_tokenizer_needs_a_model(capsys, render_spy, tmp_path):
    _one_line_error(capsys, ["render", PROMPT, "-o", str(tmp_path / "o.mp4"), "--tokenizer", "clip-tok"],
                    "--tokenizer", "--model")
    assert render_spy == []


def test_render_tokenizer_rejected_for_a_bundled_model_file(capsys, render_spy, tmp_path):
    from miga_fast.models.tiny.bundle import DEFAULT_WEIGHTS

    _one_line_error(capsys, ["render", PROMPT, "-o", str(tmp_path / "o.mp4"), "--model", str(DEFAULT_WEIGHTS),
                             "--tokenizer", "clip-tok"], "tokenizer", "VideoCrafter2")
    assert render_spy == []  # nothing rendered


@pytest.mark.parametrize("negative", ["a blue square", ""])
def test_render_negative_prompt_reaches_render(render_spy, tmp_path, negative):
    assert main(["render", PROMPT, "-o", str(tmp_path / "o.mp4"), "--negative-prompt", negative]) == 0
    assert render_spy[0]["negative_prompt"] == negative


def test_render_negative_prompt_is_the_unconditional_branch(fakes, monkeypatch, tmp_path):
    encoded = []
    monkeypatch.setattr(VideoGenerator, "encode", lambda self, prompt: encoded.append(prompt) or torch.zeros(1, 2, 3))
    assert main(["render", PROMPT, "--frames", "2", "-o", str(tmp_path / "o.gif"),
                 "--negative-prompt", "a blue square moving up on a plain red background"]) == 0
    assert encoded == [PROMPT, "a blue square moving up on a plain red background"]


def test_render_help_names_the_model_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["render", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--guidance", "--fps", "--scale", "--size HxW", "--tokenizer PATH", "--negative-prompt TEXT"):
        assert flag in text
    assert text.count("default: the model's") >= 5
    assert "vocab.json" in text and "480x832" in text
