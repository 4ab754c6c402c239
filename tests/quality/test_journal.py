"""The study's journal: an interrupted study resumes without rendering a pack twice, on a tiny random model."""

import numpy as np
import pytest

from miga_fast.quality import study
from miga_fast.quality.study import PROMPTS, run_study, variants_named


@pytest.fixture
def renders(monkeypatch):
    """The packs actually rendered: (variant, seed) per call."""
    calls, real = [], study.render_and_score

    def counted(model_path, variant, videos, frames, guidance, threads, seed, dtype):
        calls.append((variant.name, seed, dtype))
        return real(model_path, variant, videos, frames, guidance, threads, seed, dtype)

    monkeypatch.setattr(study, "render_and_score", counted)
    return calls


KW = dict(variants=variants_named(["fifo", "miga-stream"]), prompts=PROMPTS[:1], seeds=[0], frames=6, pack=1)


def _same(a: list[dict], b: list[dict]) -> None:
    assert [(r["variant"], r["seed"]) for r in a] == [(r["variant"], r["seed"]) for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["subject_consistency"] == pytest.approx(y["subject_consistency"], rel=1e-5)
        for k, s in x["series"].items():
            np.testing.assert_allclose(y["series"][k], s, rtol=1e-5)


def test_a_cut_study_resumes_where_it_stopped(weights, tmp_path, renders):
    journal = tmp_path / "journal.jsonl"
    full = run_study(weights, **KW)
    assert len(renders) == 2
    renders.clear()

    def stop(rows, videos_done):  # a Ctrl-C right after the first pack
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(weights, journal=journal, progress=stop, **KW)
    assert len(renders) == 1 and len(journal.read_text().splitlines()) == 1
    renders.clear()
    seen = []
    resumed = run_study(weights, journal=journal, progress=lambda rows, n: seen.append((len(rows), n)), **KW)
    assert len(renders) == 1, "the journal's pack was rendered again"
    assert seen == [(0, 1), (1, 2)]
    _same(full, resumed)
    renders.clear()
    _same(full, run_study(weights, journal=journal, **KW))
    assert renders == []


def test_a_torn_line_is_rendered_again_and_other_settings_do_not_match(weights, tmp_path, renders):
    journal = tmp_path / "journal.jsonl"
    run_study(weights, journal=journal, **KW)
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    renders.clear()
    run_study(weights, journal=journal, **KW)
    assert len(renders) == 1
    renders.clear()
    bf16 = run_study(weights, journal=journal, dtype="bfloat16", **KW)
    assert len(renders) == 2 and {d for *_, d in renders} == {"bfloat16"}
    assert all(np.isfinite(r["subject_consistency"]) for r in bf16)
    renders.clear()
    run_study(weights, journal=journal, **{**KW, "frames": 7})
    assert len(renders) == 2
