"""DDIMSolver against (a) the FIFO-Diffusion / MIGA formulas, (b) a scalar per-frame loop, (c) diffusers.

Where the FIFO tables differ from diffusers ``DDIMScheduler``: diffusers spaces its DDPM timesteps as
``arange(0, T) * (1000 // T) + steps_offset`` and steps from ``t`` to ``t - 1000 // T``, ending with
``final_alpha_cumprod`` (1 or ``acp[0]``, by ``set_alpha_to_one``). FIFO-Diffusion / MIGA (lvdm
``make_ddim_timesteps("uniform")``) use ``ts = round(linspace(0, 999, T))`` (uneven gaps, no offset)
and ``a_prev[0] = acp[0]``. The single-step update between two given DDPM timesteps is the same DDIM
formula in both, so (c) compares our step at level i with diffusers' step from ``ts[i]`` after setting
``num_inference_steps`` so that diffusers' gap ``1000 // num_inference_steps`` equals ``ts[i] - ts[i-1]``;
at level 0 diffusers (``set_alpha_to_one=False``) also lands on ``acp[0]``.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from miga_fast.solvers import DDIMSolver

BETA_START, BETA_END = 0.00085, 0.012


def fifo_tables(T: int, eta: float):
    """Independent float64 recomputation of the lvdm / FIFO-Diffusion DDIM tables."""
    lo, hi = BETA_START**0.5, BETA_END**0.5
    betas = np.array([(lo + k * (hi - lo) / 999) ** 2 for k in range(1000)])
    acp = np.empty(1000)
    running = 1.0
    for k in range(1000):
        running *= 1.0 - betas[k]
        acp[k] = running
    ts = np.array([int(np.round(i * 999 / (T - 1))) for i in range(T)])
    a = acp[ts]
    a_prev = np.array([acp[0]] + [acp[ts[i - 1]] for i in range(1, T)])
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    return ts, a, a_prev, sigma


def ddim_reference_loop(x, eps, noise, levels, T, eta):
    """lvdm ``DDIMSampler.ddim_step``: one frame at a time, float64, written as in the original."""
    _, a_tab, a_prev_tab, sigma_tab = fifo_tables(T, eta)
    out = torch.empty_like(x, dtype=torch.float64)
    for n, index in enumerate(levels.tolist()):
        a_t, a_prev, sigma_t = a_tab[index], a_prev_tab[index], sigma_tab[index]
        xn, en = x[n].double(), eps[n].double()
        pred_x0 = (xn - np.sqrt(1 - a_t) * en) / np.sqrt(a_t)
        dir_xt = np.sqrt(1.0 - a_prev - sigma_t**2) * en
        out[n] = np.sqrt(a_prev) * pred_x0 + dir_xt + sigma_t * noise[n].double()
    return out


@pytest.mark.parametrize("T", [16, 64])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_tables_match_formulas(T, eta):
    solver = DDIMSolver(T, eta=eta)
    ts, a, a_prev, sigma = fifo_tables(T, eta)
    assert solver.timesteps.dtype == torch.int64 and solver.alphas.dtype == torch.float32
    np.testing.assert_array_equal(solver.timesteps.numpy(), ts)
    np.testing.assert_allclose(solver.alphas.numpy(), a, rtol=1e-6)
    np.testing.assert_allclose(solver.alphas_prev.numpy(), a_prev, rtol=1e-6)
    np.testing.assert_allclose(solver.sigmas.numpy(), sigma, rtol=1e-6, atol=1e-7)
    # FIFO conventions: ts spans [0, 999] with no offset and the level-0 step is deterministic.
    assert ts[0] == 0 and ts[-1] == 999
    assert solver.alphas_prev[0] == solver.alphas[0] and solver.sigmas[0] == 0
    np.testing.assert_array_equal(solver.model_timesteps(torch.arange(T)).numpy(), ts.astype(np.float32))


def test_timesteps_regression_T16():
    expected = [0, 67, 133, 200, 266, 333, 400, 466, 533, 599, 666, 733, 799, 866, 932, 999]
    assert DDIMSolver(16).timesteps.tolist() == expected


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(4, 6, 6), (4, 2, 5, 5)])
def test_step_matches_scalar_loop(eta, shape):
    T = 16
    solver = DDIMSolver(T, eta=eta)
    levels = torch.randperm(T)  # one window, every latent at a different level (0 and T-1 included)
    x, eps, noise = (torch.randn(T, *shape) for _ in range(3))
    out = solver.step(x, eps, levels, noise=noise)
    ref = ddim_reference_loop(x, eps, noise, levels, T, eta)
    err = (out.double() - ref).abs().max().item()
    assert err < 2e-5 * ref.abs().max().item(), err


def test_level0_step_is_identity():
    solver = DDIMSolver(32, eta=1.0)
    x = torch.randn(3, 4, 5, 5)
    out = solver.step(x, torch.randn_like(x), torch.zeros(3, dtype=torch.int64), noise=torch.randn_like(x))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_matches_diffusers_ddim_between_same_timesteps(eta):
    T = 64
    solver = DDIMSolver(T, eta=eta)
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        clip_sample=False,
    )
    ts = solver.timesteps.tolist()
    # diffusers builds acp with a float32 cumprod; it agrees with our float64 tables to ~1e-6.
    np.testing.assert_allclose(sched.alphas_cumprod[ts].numpy(), solver.alphas.numpy(), rtol=3e-6)

    levels = torch.randperm(T)
    x, eps, noise = (torch.randn(T, 4, 6, 6) for _ in range(3))
    out = solver.step(x, eps, levels, noise=noise)
    for n, i in enumerate(levels.tolist()):
        gap = ts[i] - ts[i - 1] if i > 0 else 1  # level 0: any gap makes diffusers use final_alpha_cumprod
        sched.num_inference_steps = 1000 // gap
        assert 1000 // sched.num_inference_steps == gap
        frame = slice(n, n + 1)
        ref = sched.step(eps[frame], ts[i], x[frame], eta=eta, variance_noise=noise[frame]).prev_sample
        torch.testing.assert_close(out[frame], ref, rtol=1e-5, atol=1e-5)

    ref_noisy = sched.add_noise(x, noise, solver.timesteps[levels])
    torch.testing.assert_close(solver.add_noise(x, noise, levels), ref_noisy, rtol=1e-5, atol=1e-5)


def test_eta_positive_requires_noise():
    solver = DDIMSolver(8, eta=1.0)
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="noise"):
        solver.step(x, x, torch.tensor([1, 5]))
    # eta = 0 is deterministic and needs no noise.
    DDIMSolver(8, eta=0.0).step(x, x, torch.tensor([1, 5]))


def test_memoryless_interface():
    solver = DDIMSolver(8)
    assert solver.prediction == "eps" and solver.num_steps == 8
    assert solver.init_state(4, (4, 3, 3), "cpu", torch.float32) == {}
    x, eps, noise = (torch.randn(2, 4, 3, 3) for _ in range(3))
    levels = torch.tensor([7, 2])
    a = solver.step(x, eps, levels, noise=noise)
    b = solver.step(x, eps, levels, slots=torch.tensor([0, 1]), state={}, noise=noise)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_in_low_precision_out_computed_in_fp32(dtype):
    solver = DDIMSolver(16, eta=1.0)
    levels = torch.randperm(16)
    x, eps, noise = (torch.randn(16, 4, 3, 3).to(dtype) for _ in range(3))
    out = solver.step(x, eps, levels, noise=noise)
    assert out.dtype == dtype
    expected = solver.step(x.float(), eps.float(), levels, noise=noise.float()).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert solver.add_noise(x, noise, levels).dtype == dtype


def test_check_levels():
    solver = DDIMSolver(8)
    solver.check_levels(torch.tensor([0, 7, 3]))
    with pytest.raises(ValueError, match="num_steps=8"):
        solver.check_levels(torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="num_steps=8"):
        solver.check_levels(torch.tensor([-1]))
    with pytest.raises(ValueError, match="int64"):
        solver.check_levels(torch.tensor([0.0]))


def test_torch_compile_fullgraph_matches_eager():
    solver = DDIMSolver(8, eta=1.0)
    levels = torch.tensor([0, 3, 7, 5])
    x, eps, noise = (torch.randn(4, 2, 3, 3) for _ in range(3))
    compiled = torch.compile(solver.step, fullgraph=True)
    torch.testing.assert_close(
        compiled(x, eps, levels, noise=noise), solver.step(x, eps, levels, noise=noise), rtol=1e-6, atol=1e-6
    )
