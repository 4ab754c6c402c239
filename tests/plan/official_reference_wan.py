"""Independent re-derivation of the official Wan2.1 MIGA schedule (`wan_based/wan/text2video.py`,
`generate_by_miga`) for tests.

Written to follow the official loops line by line, in the official level convention (steps_list
entries s, 0 = noisiest; a step moves s -> s+1), with its `chunk_num` / `remainder` / `index_bais`
arithmetic, its in-place (fill, rollout) versus deferred (stage 1, stage 2, refine) list updates,
its list pops and tail truncation. Latents are serials; trace records convert s to the planner's
level i = T-1-s. Rollout calls with no write-back are skipped, as in the planner (they cannot
change any latent). Defaults are the official values; the keyword names follow the code:
slide_size (literal 10), end_gap = T - fifo_end_noise_index (literal 10), judged_step (literal 10),
guide_blocks (literal 2 in `2*saw_width`), rollouts (literal 3), refine_noise_index (literal 10),
memory_offset (literal 3) and the dropped tail (literal 21, the window f0).
"""

from __future__ import annotations


class _Serials:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1
        return self.n - 1


def miga_wan_trace(long_iter_nums, T=54, L=7, m=4, f0=21, slide_size=10, end_gap=10, judged_step=10,
                   guide_blocks=2, rollouts=3, refine_noise_index=10, memory_offset=3, involve_resample=False,
                   triggers=(), accept=None):
    """Official Wan MIGA schedule for `long_iter_nums` n. Returns (trace records, output serials).

    `triggers` are the ordinals of self-reflection checks that fire and `accept` the rollout the
    selection keeps (None: no rollout beats the old score)."""
    serial = _Serials()
    out = []
    saw_width, sampling_steps = L, T
    long_latent_len = sampling_steps * saw_width
    initial_frame_num = f0
    temporal_memory_len = m

    def rec(phase, lat, steps, writes, candidate=-1):
        r = {"phase": phase, "inputs": [[a, T - 1 - s] for a, s in zip(lat, steps, strict=True)],
             "writes": [[p, lat[p]] for p in writes]}
        if candidate >= 0:
            r["candidate"] = candidate
        out.append(r)

    def memory(latent_list, steps_list, start_index, end_index):
        """The `#### involve memory` block: window serials, their s and index_bais."""
        if start_index < temporal_memory_len:
            return (latent_list[start_index:end_index + temporal_memory_len],
                    steps_list[start_index:end_index + temporal_memory_len], 0)
        lat = latent_list[start_index:end_index]
        st = steps_list[start_index:end_index]
        mem = []
        if start_index >= temporal_memory_len * saw_width:
            for memory_index in reversed(range(temporal_memory_len)):
                mem.append(start_index - (memory_offset + memory_index * saw_width))
        else:
            memory_sample_slide = int(start_index / temporal_memory_len)
            for memory_index in reversed(range(temporal_memory_len)):
                mem.append(start_index - (memory_index + 1) * memory_sample_slide)
        assert all(i >= 0 for i in mem), "official memory index would wrap around"
        return [latent_list[i] for i in mem] + lat, [steps_list[i] for i in mem] + st, temporal_memory_len

    # process_0: the base latents, re-noised block by block.
    latent_list, steps_list = [], []
    noise_index = int((long_latent_len - initial_frame_num) / saw_width)
    for _chunk_index in range(int(initial_frame_num / saw_width)):
        for _inner in range(saw_width):
            steps_list.append(sampling_steps - noise_index)
            latent_list.append(serial())
        noise_index += 1

    # process_1: the fill loop.
    initial_frame_num_adjust = initial_frame_num - temporal_memory_len
    initial_iter_nums = long_iter_nums
    if initial_iter_nums > (long_latent_len - initial_frame_num) / saw_width:
        initial_iter_nums = int((long_latent_len - initial_frame_num) / saw_width)
    fifo_end_noise_index = sampling_steps - end_gap
    noise_index = sampling_steps
    n_checks = 0
    for _ in range(initial_iter_nums):
        for _inner in range(saw_width):
            steps_list.append(sampling_steps - noise_index)
            latent_list.append(serial())
        if len(latent_list) == long_latent_len:
            break
        if steps_list[0] >= fifo_end_noise_index - 2:
            break
        frame_len = len(latent_list)
        chunk_num = int((frame_len - initial_frame_num_adjust) / slide_size) + 2
        remainder = (frame_len - initial_frame_num_adjust) % slide_size
        for chunk_index in range(chunk_num):
            if chunk_index == 0:
                start_index, cal_len = 0, remainder
                if cal_len == 0:
                    continue
            elif chunk_index == chunk_num - 1:
                cal_len, start_index = initial_frame_num_adjust, frame_len - initial_frame_num_adjust
            else:
                start_index, cal_len = remainder + (chunk_index - 1) * slide_size, slide_size
            end_index = start_index + initial_frame_num_adjust
            lat, st, index_bais = memory(latent_list, steps_list, start_index, end_index)
            rec("fill", lat, st, [f + index_bais for f in range(cal_len)])
            for frame_index in range(cal_len):  # in place: later windows see the new s
                steps_list[start_index + frame_index] += 1

        if involve_resample and steps_list[0] > judged_step + guide_blocks:
            judged_index = int(len(steps_list) / saw_width - judged_step)
            fired = n_checks in triggers
            n_checks += 1
            if fired:
                guide_latents = latent_list[(judged_index - guide_blocks) * saw_width: judged_index * saw_width]
                guide_steps = steps_list[(judged_index - guide_blocks) * saw_width: judged_index * saw_width]
                adjust_sample_res = []
                for adjust_sample_index in range(rollouts):
                    adjust_latents_list, adjust_steps_list = list(guide_latents), list(guide_steps)
                    for _ in range(judged_step):
                        for _inner in range(saw_width):
                            adjust_steps_list.append(0)
                            adjust_latents_list.append(serial())
                        adjust_frame_len = len(adjust_latents_list)
                        chunk_num = int((adjust_frame_len - initial_frame_num) / slide_size) + 2
                        remainder = (adjust_frame_len - initial_frame_num) % slide_size
                        for chunk_index in range(chunk_num):
                            if chunk_index == 0:
                                start_index, cal_len = 0, remainder
                                if cal_len == 0:
                                    continue
                            elif chunk_index == chunk_num - 1:
                                cal_len, start_index = initial_frame_num, adjust_frame_len - initial_frame_num
                            else:
                                start_index, cal_len = remainder + (chunk_index - 1) * slide_size, slide_size
                            end_index = start_index + initial_frame_num
                            lat = adjust_latents_list[start_index:end_index]
                            st = adjust_steps_list[start_index:end_index]
                            writes = [f for f in range(cal_len) if start_index + f >= guide_blocks * saw_width]
                            if writes:
                                rec("rollout", lat, st, writes, adjust_sample_index)
                            for f in writes:
                                adjust_steps_list[start_index + f] += 1
                    adjust_sample_res.append((adjust_latents_list, adjust_steps_list))
                if accept is not None:
                    adjust_latents_list, adjust_steps_list = adjust_sample_res[accept]
                    latent_list = latent_list[:judged_index * saw_width] + \
                        adjust_latents_list[-judged_step * saw_width:]
                    # steps_list is not touched officially: it already holds the same levels.
                    assert steps_list[judged_index * saw_width:] == adjust_steps_list[-judged_step * saw_width:]

    # Stage 1: zigzag iterative denoising.
    begin_pop_flag = False
    saved_latents = []
    timesteps_iter_index = -1
    while True:
        timesteps_iter_index += 1
        if len(saved_latents) >= long_iter_nums * saw_width:
            break
        frame_len = len(latent_list)
        remainder1 = timesteps_iter_index % slide_size
        left_frame_len = frame_len - remainder1
        if left_frame_len < initial_frame_num_adjust:
            remainder1 = 0
            left_frame_len = frame_len - remainder1
        chunk_num = int((left_frame_len - initial_frame_num_adjust) / slide_size) + 2 + 1
        remainder = (left_frame_len - initial_frame_num_adjust) % slide_size
        written = []
        for chunk_index in range(chunk_num):
            if chunk_index == 0:
                start_index, cal_len = 0, remainder1
                if cal_len == 0:
                    continue
            elif chunk_index == chunk_num - 2:
                start_index, cal_len = frame_len - initial_frame_num_adjust - remainder, remainder
                if cal_len == 0:
                    continue
            elif chunk_index == chunk_num - 1:
                cal_len, start_index = initial_frame_num_adjust, frame_len - initial_frame_num_adjust
            else:
                start_index, cal_len = remainder1 + (chunk_index - 1) * slide_size, slide_size
            end_index = start_index + initial_frame_num_adjust
            lat, st, index_bais = memory(latent_list, steps_list, start_index, end_index)  # pre-iteration s
            rec("stage1", lat, st, [f + index_bais for f in range(cal_len)])
            written += range(start_index, start_index + cal_len)
        assert sorted(written) == list(range(frame_len))  # the dict gets one new prev_sample per latent
        if steps_list[0] >= fifo_end_noise_index - 1 and begin_pop_flag:
            for _inner in range(saw_width):
                saved_latents.append(latent_list.pop(0))
            steps_list = steps_list[:len(latent_list)]  # official: truncated from the tail
        else:
            steps_list = [s + 1 for s in steps_list]
            if steps_list[0] >= fifo_end_noise_index - 1:
                begin_pop_flag = True
        if begin_pop_flag and steps_list[-1] <= 1:
            for _inner in range(saw_width):
                steps_list.append(0)
                latent_list.append(serial())

    # Stage 2 and the refine pass: unified levels, deferred updates.
    def unified(phase, lat_list, steps, iterations):
        for it in range(iterations):
            frame_len = len(lat_list)
            remainder1 = it % slide_size
            left_frame_len = frame_len - remainder1
            if left_frame_len < initial_frame_num:
                remainder1 = 0
                left_frame_len = frame_len - remainder1
            chunk_num = int((left_frame_len - initial_frame_num) / slide_size) + 2 + 1
            remainder = (left_frame_len - initial_frame_num) % slide_size
            for chunk_index in range(chunk_num):
                if chunk_index == 0:
                    start_index, cal_len = 0, remainder1
                    if cal_len == 0:
                        continue
                elif chunk_index == chunk_num - 2:
                    start_index, cal_len = frame_len - initial_frame_num - remainder, remainder
                    if cal_len == 0:
                        continue
                elif chunk_index == chunk_num - 1:
                    cal_len, start_index = initial_frame_num, frame_len - initial_frame_num
                else:
                    start_index, cal_len = remainder1 + (chunk_index - 1) * slide_size, slide_size
                end_index = start_index + initial_frame_num
                assert start_index >= 0, "official stage-2 window starts before the list (crash)"
                rec(phase, lat_list[start_index:end_index], steps[start_index:end_index], list(range(cal_len)))
            if steps[0] < sampling_steps - 1:
                steps = [s + 1 for s in steps]

    latent_list = saved_latents
    noise_index = sampling_steps - fifo_end_noise_index
    unified("stage2", latent_list, [sampling_steps - noise_index - 1] * len(latent_list),
            sampling_steps - fifo_end_noise_index)
    noise_index = refine_noise_index
    unified("refine", latent_list, [sampling_steps - noise_index] * len(latent_list), noise_index)
    return out, latent_list[:-initial_frame_num]
