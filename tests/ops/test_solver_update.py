"""solver_update (CFG + DDIM / flow-Euler step into the ring): reference vs the engine's unfused path, Triton
(interpreter) and C++ vs the reference."""

import pytest
import torch

from miga_fast.ops.solver_update import solver_update, solver_update_ref
from miga_fast.solvers import DDIMSolver
from miga_fast.solvers.flow import FlowEulerSolver, FlowUniPCSolver

from .conftest import DTYPES, TOL, opcheck_utils

T = 16
SOLVERS = {
    "ddim-eta1": lambda: DDIMSolver(T, eta=1.0),
    "ddim-eta0": lambda: DDIMSolver(T, eta=0.0),
    "euler": lambda: FlowEulerSolver(T),
}
# latent (C, H, W): single value, primes, scaled-down VC2 (4 ch) and Wan (16 ch) latents
LATENTS = [(1, 1, 1), (3, 7, 11), (4, 5, 8), (16, 6, 10)]


def window(latent, dtype, solver, *, batch=2, frames=3, capacity=11, cfg=True):
    """Engine-like inputs: a gathered window x [B*F, ...], raw denoiser output [2B, C, F, H, W] viewed as
    [B, F, C, H, W] halves, the writes (rows), their slots / levels and noise."""
    C, H, W = latent
    n = batch * frames
    x = torch.randn(n, C, H, W).to(dtype)
    raw = torch.randn(2 * batch, C, frames, H, W).to(dtype)
    cond = raw[:batch].permute(0, 2, 1, 3, 4)
    uncond = raw[batch:].permute(0, 2, 1, 3, 4) if cfg else None
    rows = torch.tensor([0, 2, 3, n - 1])
    slots = torch.tensor([7, 1, 4, capacity - 1])
    levels = torch.tensor([T - 1, 3, 0, 9])
    tables = solver.affine_tables()
    noise = torch.randn(len(rows), C, H, W).to(dtype) if tables["c_noise"] is not None else None
    ring = torch.randn(capacity, C, H, W).to(dtype)
    return ring, dict(slots=slots, x=x, levels=levels, pred_cond=cond, pred_uncond=uncond, noise=noise,
                      rows=rows, guidance_scale=7.5 if cfg else 1.0, **tables)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("cfg", [True, False])
def test_reference_equals_engine_path(name, cfg):
    """fp32: CFG combine, solver.step on x[w] / pred[w], index_copy_ into the ring, bit for bit."""
    solver = SOLVERS[name]()
    ring, a = window((4, 5, 8), torch.float32, solver, cfg=cfg)
    cond = a["pred_cond"].reshape(-1, *ring.shape[1:])
    pred = cond
    if cfg:
        uncond = a["pred_uncond"].reshape(-1, *ring.shape[1:])
        pred = uncond + a["guidance_scale"] * (cond - uncond)
    w = a["rows"]
    expected = ring.clone()
    expected.index_copy_(0, a["slots"], solver.step(a["x"][w], pred[w], a["levels"], noise=a["noise"]))
    solver_update_ref(ring, **a)
    assert torch.equal(ring, expected)


@pytest.mark.parametrize("latent", LATENTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_matches_reference(kernel_backend, latent, dtype, name):
    ring, a = window(latent, dtype, SOLVERS[name]())
    expected = ring.clone()
    solver_update_ref(expected, **a)
    untouched = torch.ones(ring.shape[0], dtype=torch.bool)
    untouched[a["slots"]] = False
    before = ring[untouched].clone()
    solver_update(ring, **a, backend=kernel_backend)
    torch.testing.assert_close(ring.float(), expected.float(), **TOL[dtype])
    assert torch.equal(ring[untouched], before)


def test_single_prediction_whole_window(kernel_backend):
    """guidance 1 (no uncond), no rows: every row of x is stepped, pred given as [N, C, H, W]."""
    solver = SOLVERS["ddim-eta1"]()
    ring = torch.randn(9, 4, 3, 5)
    x, pred, noise = (torch.randn(6, 4, 3, 5) for _ in range(3))
    args = dict(slots=torch.tensor([8, 0, 2, 1, 5, 3]), x=x, levels=torch.arange(6) * 2, pred_cond=pred,
                noise=noise, **solver.affine_tables())
    expected = ring.clone()
    solver_update_ref(expected, **args)
    solver_update(ring, **args, backend=kernel_backend)
    torch.testing.assert_close(ring, expected, **TOL[torch.float32])


def test_opcheck(kernel_backend):
    ring, a = window((2, 3, 4), torch.float32, SOLVERS["ddim-eta1"]())
    args = (ring, a["slots"], a["x"], a["levels"], a["pred_cond"], a["pred_uncond"], a["guidance_scale"],
            a["c_pred"], a["c_x"], a["c_noise"], a["noise"], a["rows"])
    if kernel_backend == "cpp":
        op, name = torch.ops.miga_fast.solver_update.default, "solver_update"
    else:
        from miga_fast.kernels.solver_update import solver_update_triton as op

        name = "solver_update_triton"
    torch.library.opcheck(op, args, test_utils=opcheck_utils(name))


@pytest.mark.parametrize("which", ["ref", "triton", "cpp"])
def test_compiles_without_graph_breaks(which, request):
    if which == "cpp":
        request.getfixturevalue("cpp_extension")
    ring, a = window((2, 3, 4), torch.float32, SOLVERS["euler"]())
    expected = ring.clone()
    solver_update_ref(expected, **a)

    def step(ring, a):
        solver_update(ring, **a, backend=which)
        return ring.sum()

    compiled = torch.compile(step, fullgraph=True, backend="eager" if which == "triton" else "aot_eager")
    torch.testing.assert_close(compiled(ring, a), expected.sum())
    torch.testing.assert_close(ring, expected)


def test_cpp_checks_index_ranges(request):
    request.getfixturevalue("cpp_extension")
    ring, a = window((2, 3, 4), torch.float32, SOLVERS["euler"]())
    a["levels"] = torch.tensor([0, 1, T, 2])
    with pytest.raises(RuntimeError, match=r"levels\[2\] = 16 is outside \[0, 16\)"):
        solver_update(ring, **a, backend="cpp")


def test_rejects_multistep_solvers_and_bad_shapes():
    assert FlowUniPCSolver(T).affine_tables() is None  # per-slot history: it steps through solver.step
    ring, a = window((2, 3, 4), torch.float32, SOLVERS["ddim-eta1"]())
    with pytest.raises(ValueError, match="c_noise and noise go together"):
        solver_update(ring, **{**a, "noise": None}, backend="ref")
    with pytest.raises(ValueError, match="x must be"):
        solver_update(ring, **{**a, "x": a["x"][:, :1]}, backend="ref")


@pytest.mark.gpu
def test_cuda_auto_dispatch_under_inductor():
    solver = SOLVERS["ddim-eta1"]().to("cuda")
    ring, a = window((4, 5, 8), torch.float32, solver)
    ring = ring.cuda()
    a = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    expected = ring.clone()
    solver_update_ref(expected, **a)

    def step(ring, a):
        solver_update(ring, **a)
        return ring

    torch.compile(step, fullgraph=True)(ring, a)
    torch.testing.assert_close(ring, expected, **TOL[torch.float32])
