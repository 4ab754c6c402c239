"""The static step: bit-exact to the eager path uncompiled, close to it compiled, no recompiles, no host sync."""

import ast
import inspect
import textwrap

import pytest
import torch
from torch._dynamo.utils import counters

import miga_fast.runtime.step as step_mod
from miga_fast.models.toy import ToyDenoiser
from miga_fast.models.wan import WanConfig, WanDiT
from miga_fast.plan import preset
from miga_fast.runtime import Engine
from miga_fast.solvers import DDIMSolver, FlowEulerSolver, FlowUniPCSolver, make_solver

SHAPE = (4, 6, 6)
SMALL_MIGA = dict(num_steps=24, window=8, zigzag=2, guidance_frames=2, stride=4, end_level=3, refine_level=3)
SMALL_WAN = dict(num_steps=20, window=9, zigzag=3, guidance_frames=2, stride=4, end_level=3, refine_level=3,
                 reflection=False)
TINY_WAN = WanConfig(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                     text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1)


@pytest.fixture(scope="module")
def wan():
    torch.manual_seed(0)
    return WanDiT(TINY_WAN).eval()


def conds():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g) * 0.1


def run(model, cfg, n, mode, shape=SHAPE, **kw):
    cond, uncond = conds()
    engine = Engine(model, make_solver(cfg.solver, cfg.num_steps), cfg, shape, cond=cond, uncond=uncond,
                    guidance_scale=3.0, seed=3, mode=mode, **kw)
    with torch.no_grad():
        return torch.stack(list(engine.run(n))), engine


@pytest.fixture
def uncompiled(monkeypatch):
    """Run the static step as plain PyTorch: isolates the fixed-shape design from the compiler."""
    monkeypatch.setattr(step_mod, "_compile", lambda fn: fn)


@pytest.mark.parametrize("name, overrides, n, kw", [
    ("vc2-fifo", dict(num_steps=16, window=8), 10, {}),
    ("vc2-fifo", dict(num_steps=16, window=8), 6, dict(window_batch=3)),  # split groups: held writes
    ("vc2-miga-stream", dict(SMALL_MIGA, solver="flow_unipc"), 8, {}),  # re-noised context, multistep state
    ("vc2-miga", dict(SMALL_MIGA, num_steps=16, reflection=True, judged_level=8, reflect_blocks=2, candidates=2,
                      reflect_threshold=-1.0), 16, {}),  # a triggered reflection: rollouts and a selection
    ("wan-miga-stream", SMALL_WAN, 10, dict(window_batch=2)),  # Wan stage-1 groups split over batches
])
def test_static_step_is_bit_exact_to_eager(uncompiled, toy, name, overrides, n, kw):
    cfg = preset(name, **overrides)
    ref, _ = run(toy, cfg, n, "eager", **kw)
    ours, engine = run(toy, cfg, n, "compile", **kw)
    assert engine.mode == "compile" and engine.runner.compile  # (uncompiled by the fixture)
    assert torch.equal(ours, ref)
    if cfg.reflection:
        assert engine.stats.reflection_triggers > 0


def assert_close(ours, ref, tol=1e-4):
    err = (ours - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), f"compile vs eager: max abs error {err}"


@pytest.fixture
def no_recompiles():
    """Any recompile raises; yields a function returning the number of graphs compiled since."""
    before = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield lambda: counters["stats"]["unique_graphs"] - before


def test_compile_fifo_toy(toy, no_recompiles):
    cfg = preset("vc2-fifo", num_steps=16, window=8)
    ref, _ = run(toy, cfg, 10, "eager")
    ours, engine = run(toy, cfg, 10, "compile")
    assert_close(ours, ref)
    assert no_recompiles() == len(engine.step_kinds) == 2  # the base clip's kind + FIFO's batched windows


def test_compile_miga_stream_toy_hundreds_of_calls(toy, no_recompiles):
    """3 step kinds, ~200 model calls: each kind compiles once, storage never moves, output matches eager."""
    cfg = preset("vc2-miga-stream", **SMALL_MIGA)
    ref, _ = run(toy, cfg, 14, "eager")
    cond, uncond = conds()
    engine = Engine(toy, DDIMSolver(cfg.num_steps), cfg, SHAPE, cond=cond, uncond=uncond, guidance_scale=3.0,
                    seed=3, mode="compile")
    seen = []
    with torch.no_grad():
        ours = torch.stack(list(engine.run(14, on_event=lambda ev: seen.append(dict(engine.ring.pointers())))))
    assert engine.stats.model_calls >= 200
    assert_close(ours, ref)
    assert no_recompiles() == len(engine.step_kinds) == 3
    assert all(p == seen[0] for p in seen)


def test_compile_fifo_tiny_wan(wan, no_recompiles):
    cfg = preset("tiny-fifo", num_steps=8, window=4)
    ref, _ = run(wan.denoise, cfg, 6, "eager", shape=(4, 4, 4))
    ours, engine = run(wan.denoise, cfg, 6, "compile", shape=(4, 4, 4))
    assert_close(ours, ref)
    assert no_recompiles() == len(engine.step_kinds) == 2  # the base clip's kind + FIFO's batched windows


@pytest.mark.slow
def test_compile_miga_stream_tiny_wan(wan, no_recompiles):
    cfg = preset("tiny-miga-stream", num_steps=12, window=4, zigzag=2, guidance_frames=1, stride=2, end_level=2,
                 refine_level=2, reflection=False)
    ref, _ = run(wan.denoise, cfg, 8, "eager", shape=(4, 4, 4))
    ours, engine = run(wan.denoise, cfg, 8, "compile", shape=(4, 4, 4))
    assert_close(ours, ref)
    assert no_recompiles() == len(engine.step_kinds)


REFLECT = dict(reflection=True, judged_level=8, reflect_blocks=2, candidates=2, reflect_threshold=-1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides, n", [
    ("vc2-fifo-nolookahead", dict(num_steps=16, window=8), 12),
    ("vc2-miga", dict(SMALL_MIGA, num_steps=16, **REFLECT), 16),
    ("wan-miga", dict(SMALL_WAN, reflection=True, judged_level=10, reflect_threshold=-1.0), 12),
    ("wan-miga-stream", SMALL_WAN, 12),
])
def test_compile_every_preset_toy(toy, no_recompiles, name, overrides, n):
    """The presets the fast tests leave out (bench/bench_step.py runs all of them with timings)."""
    cfg = preset(name, **overrides)
    ref, eager = run(toy, cfg, n, "eager")
    ours, engine = run(toy, cfg, n, "compile")
    assert_close(ours, ref)
    assert no_recompiles() == len(engine.step_kinds)
    assert engine.stats.reflection_triggers == eager.stats.reflection_triggers


def test_static_step_never_reads_tensors_on_the_host(uncompiled, toy, monkeypatch):
    cfg = preset("vc2-miga-stream", **dict(SMALL_MIGA, solver="flow_unipc"))
    cond, uncond = conds()
    engine = Engine(toy, FlowUniPCSolver(cfg.num_steps), cfg, SHAPE, cond=cond, uncond=uncond, guidance_scale=3.0,
                    mode="compile")
    runner = engine.runner
    calls = []

    def guarded(*args):
        def forbid(*a, **k):
            raise AssertionError("host sync inside the static step")

        with monkeypatch.context() as m:
            for name in ("item", "__bool__", "tolist", "cpu", "numpy", "__int__", "__float__"):
                m.setattr(torch.Tensor, name, forbid)
            calls.append(args[0])
            return runner(*args)

    engine.stepper.runner = guarded
    with torch.no_grad():
        assert len(list(engine.run(6))) == 6
    assert len(calls) > 50


# ---------------------------------------------------------------- source scan: no host sync by construction
SYNC_METHODS = {"item", "cpu", "tolist", "numpy", "nonzero"}
SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "dim", "size", "numel"}


def host_sync_findings(fn) -> list[str]:
    """Lines of `fn` that read tensor values on the host: `.item()`-like calls, bool/int/float of a tensor,
    and `if`/`while`/conditional expressions/asserts on tensor values. Tensors are the parameters annotated
    `Tensor` and every name assigned from an expression using a tensor's values (`.shape` etc. do not count)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    func = tree.body[0]
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node
    tensors = {a.arg for a in func.args.args + func.args.kwonlyargs
               if a.annotation is not None and "Tensor" in ast.unparse(a.annotation)}

    def uses_values(expr) -> bool:
        for node in ast.walk(expr):
            if isinstance(node, ast.Name) and node.id in tensors:
                parent = getattr(node, "parent", None)
                if isinstance(parent, ast.Attribute) and parent.attr in SHAPE_ATTRS:
                    continue
                if isinstance(parent, ast.Compare) and all(isinstance(o, ast.Is | ast.IsNot) for o in parent.ops):
                    continue
                return True
        return False

    findings = []
    for node in ast.walk(func):  # source order is enough: assignments precede uses in straight-line code
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and node.value is not None \
                and uses_values(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            tensors.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.For) and uses_values(node.iter):
            findings.append(f"line {node.lineno}: loop over tensor values")
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in SYNC_METHODS:
                findings.append(f"line {node.lineno}: .{f.attr}()")
            if isinstance(f, ast.Name) and f.id in ("bool", "int", "float") and any(map(uses_values, node.args)):
                findings.append(f"line {node.lineno}: {f.id}() of a tensor")
        if isinstance(node, ast.If | ast.While | ast.IfExp | ast.Assert) and uses_values(node.test):
            findings.append(f"line {node.lineno}: branch on tensor values: {ast.unparse(node.test)}")
    return findings


def test_scanner_catches_host_syncs():
    from torch import Tensor

    def bad(x: Tensor, n: int):
        y = x.sum()
        if y > 0:
            n += 1
        m = int(x.max()) + x.item() + float(y)
        z = x if bool(x.any()) else -x
        return n, m, z, x.cpu(), x.tolist()

    found = "\n".join(host_sync_findings(bad))
    for what in ("branch on tensor values: y > 0", "int()", ".item()", "float()", "bool()", ".cpu()", ".tolist()"):
        assert what in found, (what, found)

    def good(x: Tensor, mask: Tensor | None, n: int):
        b, c = x.shape
        if mask is not None and b > 1 and x.dim() == 2 and n:
            x = x * 2
        return x

    assert host_sync_findings(good) == []


@pytest.mark.parametrize("fn", [step_mod.window_step, DDIMSolver.step, DDIMSolver.add_noise, FlowEulerSolver.step,
                                FlowUniPCSolver.step, ToyDenoiser.forward, WanDiT.forward])
def test_step_path_source_has_no_host_sync(fn):
    assert host_sync_findings(fn) == []
