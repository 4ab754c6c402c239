"""Independent re-derivation of the official FIFO-Diffusion and MIGA (VC2) schedules for tests.

Written to follow the official loops line by line (Python lists of (serial, level) records,
`chunk_num`/`remainder` arithmetic, list pops) rather than the planner's structure, so a shared
misunderstanding is unlikely. Produces trace records in the `miga-fast trace` format. Rollout
calls with no write-back are skipped here too (they cannot change any latent).

With an executor `ex` (bench/baseline_loop.py) the same loops also compute the video
eagerly on lists of tensors, which is how the engine's outputs are checked.
"""

from __future__ import annotations


class _Serials:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1
        return self.n - 1


def _rec(phase, lat, idx, writes, candidate=-1):
    r = {"phase": phase, "inputs": [[lat[i], idx[i]] for i in range(len(lat))],
         "writes": [[p, lat[p]] for p in writes]}
    if candidate >= 0:
        r["candidate"] = candidate
    return r


def fifo_trace(T, f0, lookahead, new_video_length, ex=None):
    serial = _Serials()
    n = T // f0
    latents, indices = [], []
    if lookahead:
        for _ in range(f0 // 2):
            latents.append(serial())
            indices.append(0)
            ex and ex.new(latents[-1], 0, "base", 0)
    for i in range(T):
        latents.append(serial())
        indices.append(i)
        ex and ex.new(latents[-1], i, "base", max(0, i - (T - f0)))
    out = []
    for it in range(new_video_length + T - f0):
        for rank in reversed(range(2 * n if lookahead else n)):
            start_idx = rank * (f0 // 2) if lookahead else rank * f0
            end_idx = start_idx + f0
            lat = latents[start_idx:end_idx]
            idx = indices[start_idx:end_idx]
            writes = list(range(f0 // 2, f0)) if lookahead else list(range(f0))
            out.append(_rec("fifo", lat, idx, writes))
            ex and ex.window("fifo", lat, idx, writes)
        if ex and it >= T - f0:
            ex.output(latents[f0 // 2 if lookahead else 0])
        latents = latents[1:] + [serial()]
        ex and ex.new(latents[-1], T - 1, "noise")
    return out


def miga_vc2_trace(N, T=64, L=4, m=4, f0=16, S=8, end=10, refine=10, reflection=False, judged_step=50,
                   r=3, K=5, triggers=(), accept=None, ex=None):
    """Official VC2 MIGA schedule; `triggers` are the ordinals of reflection checks that fire and
    `accept` the candidate the selection keeps (None: none beats the old score)."""
    serial = _Serials()
    long_iter_nums = -(-N // L)
    long_latent_len = T * L
    W = f0 - m
    out = []
    latent_list, steps_list = [], []
    noise_index = int((long_latent_len - f0) / L) - 1
    for chunk_index in range(int(f0 / L)):
        for inner in range(L):
            latent_list.append(serial())
            steps_list.append(noise_index)
            ex and ex.new(latent_list[-1], noise_index, "base", chunk_index * L + inner)
        noise_index += 1

    def guided(start_index, end_index):
        if start_index < m:
            sel = list(range(start_index, min(end_index + m, len(latent_list))))
            return sel, 0
        if start_index >= m * L:
            mem = [start_index - (L // 2 + mi * L) for mi in reversed(range(m))]
        else:
            slide = int(start_index / m)
            mem = [start_index - (mi + 1) * slide for mi in reversed(range(m))]
        return mem + list(range(start_index, min(end_index, len(latent_list)))), m

    def step(phase, sel, bias, cal_len, start_index, lat_list, st_list, skip_below=-1, candidate=-1):
        lat = [lat_list[i] for i in sel]
        idx = [st_list[i] for i in sel]
        writes = [fi + bias for fi in range(cal_len) if start_index + fi >= skip_below]
        if skip_below >= 0 and not writes:
            return
        out.append(_rec(phase, lat, idx, writes, candidate))
        ex and ex.window(phase, lat, idx, writes)
        for fi in range(cal_len):
            if start_index + fi >= skip_below:
                st_list[start_index + fi] -= 1

    initial_iter_nums = long_iter_nums
    if initial_iter_nums > long_latent_len / L - f0 / L:
        initial_iter_nums = int(long_latent_len / L - f0 / L)
    n_checks = 0
    for _ in range(initial_iter_nums):
        for _ in range(L):
            latent_list.append(serial())
            steps_list.append(T - 1)
            ex and ex.new(latent_list[-1], T - 1, "base", f0 - 1)
        if len(latent_list) == long_latent_len:
            break
        if steps_list[0] <= end + 1:
            break
        frame_len = len(latent_list)
        chunk_num = int((frame_len - W) / S) + 2
        remainder = (frame_len - W) % S
        for chunk_index in range(chunk_num):
            if chunk_index == 0:
                start_index, cal_len = 0, remainder
                if cal_len == 0:
                    continue
            elif chunk_index == chunk_num - 1:
                cal_len, start_index = W, frame_len - W
            else:
                start_index, cal_len = remainder + (chunk_index - 1) * S, S
            sel, bias = guided(start_index, start_index + W)
            step("fill", sel, bias, cal_len, start_index, latent_list, steps_list)
        if reflection and steps_list[0] < judged_step - r:
            judged_index = int(judged_step - steps_list[0])
            if ex:
                fired = ex.check(latent_list[judged_index * L:(judged_index + 1) * L],
                                 latent_list[(judged_index - r) * L: judged_index * L])
            else:
                fired = n_checks in triggers
            n_checks += 1
            if fired:
                guide = latent_list[(judged_index - r) * L: judged_index * L]
                guide_steps = steps_list[(judged_index - r) * L: judged_index * L]
                results = []
                for k in range(K):
                    a_lat, a_steps = list(guide), list(guide_steps)
                    for _ in range(T - judged_step - 1):
                        for _ in range(L):
                            a_lat.append(serial())
                            a_steps.append(T - 1)
                            ex and ex.new(a_lat[-1], T - 1, "base", f0 - 1)
                        n_a = len(a_lat)
                        chunk_num = int((n_a - f0) / S) + 2 if n_a - f0 > 0 else 1
                        remainder = (n_a - f0) % S if n_a - f0 > 0 else n_a
                        for chunk_index in range(chunk_num):
                            if chunk_index == 0:
                                start_index, cal_len = 0, remainder
                                if cal_len == 0:
                                    continue
                            elif chunk_index == chunk_num - 1:
                                cal_len, start_index = f0, n_a - f0
                            else:
                                start_index, cal_len = remainder + (chunk_index - 1) * S, S
                            sel = list(range(start_index, min(start_index + f0, n_a)))
                            step("rollout", sel, 0, cal_len, start_index, a_lat, a_steps,
                                 skip_below=r * L, candidate=k)
                    results.append((a_lat, a_steps))
                if ex:
                    accept = ex.select([a[r * L:(r + 1) * L] for a, _ in results], guide)
                if accept is not None:
                    a_lat, a_steps = results[accept]
                    latent_list = latent_list[: judged_index * L] + a_lat[r * L:]
                    steps_list = steps_list[: judged_index * L] + a_steps[r * L:]

    saved = []
    begin_pop_flag = False
    it = -1
    while True:
        it += 1
        if len(saved) >= long_iter_nums * L:
            break
        frame_len = len(latent_list)
        remainder1 = it % S
        left_frame_len = frame_len - remainder1
        if left_frame_len < W:
            remainder1 = 0
            left_frame_len = frame_len
        chunk_num = int((left_frame_len - W) / S) + 2 + 1
        remainder = (left_frame_len - W) % S
        for chunk_index in range(chunk_num):
            if chunk_index == 0:
                start_index, cal_len = 0, remainder1
                if cal_len == 0:
                    continue
            elif chunk_index == chunk_num - 2:
                start_index, cal_len = frame_len - W - remainder, remainder
                if cal_len == 0:
                    continue
            elif chunk_index == chunk_num - 1:
                cal_len, start_index = W, frame_len - W
            else:
                start_index, cal_len = remainder1 + (chunk_index - 1) * S, S
            sel, bias = guided(start_index, start_index + W)
            step("stage1", sel, bias, cal_len, start_index, latent_list, steps_list)
        if steps_list[0] <= end and begin_pop_flag:
            for _ in range(L):
                saved.append(latent_list.pop(0))
            steps_list = steps_list[L:]
        elif steps_list[0] <= end:
            begin_pop_flag = True
        if steps_list[-1] <= T - 2:
            for _ in range(L):
                latent_list.append(serial())
                steps_list.append(T - 1)
                ex and ex.new(latent_list[-1], T - 1, "noise")

    def unified(phase, lat_list, level, iters):
        st = [level] * len(lat_list)
        frame_len = len(lat_list)
        for it in range(iters):
            remainder1 = it % S
            left_frame_len = frame_len - remainder1
            if left_frame_len < f0:
                remainder1 = 0
                left_frame_len = frame_len
            chunk_num = int((left_frame_len - f0) / S) + 2 + 1
            remainder = (left_frame_len - f0) % S
            for chunk_index in range(chunk_num):
                if chunk_index == 0:
                    start_index, cal_len = 0, remainder1
                    if cal_len == 0:
                        continue
                elif chunk_index == chunk_num - 2:
                    start_index, cal_len = frame_len - f0 - remainder, remainder
                    if cal_len == 0:
                        continue
                elif chunk_index == chunk_num - 1:
                    cal_len, start_index = f0, frame_len - f0
                else:
                    start_index, cal_len = remainder1 + (chunk_index - 1) * S, S
                sel = list(range(start_index, start_index + f0))
                step(phase, sel, 0, cal_len, start_index, lat_list, st)

    unified("stage2", saved, end - 1, end - 1)
    if refine:
        ex and ex.renoise(saved, refine)
        unified("refine", saved, refine, refine)
    if ex:
        for s in saved[:N]:
            ex.output(s)
    return out
