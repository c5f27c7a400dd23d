"""The @triton.jit kernels of the "triton" backends (imported only when that backend runs).

Host side, layouts and the autograd Function: :mod:`medssm.ops.scan_triton`. Every kernel runs one program
per (batch, block of ``BLOCK_D`` channels) and keeps that block's state, a (BLOCK_D, BLOCK_N) fp32 tile, in
registers while it walks the sequence; BLOCK_N is N rounded up to a power of two (masked). A block never
straddles two groups of grouped B/C (the host picks BLOCK_D so), so a step reads one (N,) row of B and of
C for the whole block, and the backward reduces dB, dC over the block before one atomic add per row.

Addresses: (batch, d, L) tensors by their own three strides; B and C by five, (batch, group, channel, n, L),
so that one code path reads fixed (d, N) coefficients (batch, group and L strides 0) and selective or
grouped (batch, G, N, L) ones (channel stride 0; selective is G = 1).

softplus(x) is written out as log(1 + e^x), with e^x alone below -15 (where 1 + e^x rounds to 1) and x
above 20, and sigmoid as 1 / (1 + e^-x), inline rather than as @triton.jit helpers: each helper call costs
the interpreter a re-patch of triton.language (a third of the parity tests' time when they were helpers
called every step); the helpers below run once per program.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _block(pid_d, dim, d_state, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The program's channel and state offsets and their masks."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < d_state
    return offs_d, offs_n, mask_d, mask_n, mask_d[:, None] & mask_n[None, :]


@triton.jit
def _tile(ptr, offs_d, offs_n, s_d, s_n, mask_dn):
    """A (BLOCK_D, BLOCK_N) fp32 tile of a (d, N) tensor (zeros where masked)."""
    return tl.load(ptr + offs_d[:, None] * s_d + offs_n[None, :] * s_n, mask=mask_dn, other=0.0).to(tl.float32)


@triton.jit
def _vector(ptr, offs_d, mask_d, PRESENT: tl.constexpr):
    """A (BLOCK_D,) fp32 slice of a contiguous (d,) tensor, or zeros when the argument was not given."""
    if PRESENT:
        v = tl.load(ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        v = tl.zeros(offs_d.shape, dtype=tl.float32)
    return v


@triton.jit
def scan_fwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
        dim, seqlen, d_state, n_chunks, b_cpg, c_cpg,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_ob, s_od, s_ol, s_ad, s_an,
        s_bb, s_bg, s_bd, s_bn, s_bl, s_cb, s_cg, s_cd, s_cn, s_cl,
        B_FIXED: tl.constexpr, C_FIXED: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, CHUNK: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = (<h_t, C_t> + D u_t) silu(z_t), h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t; with SAVE, the state
    before every chunk of CHUNK steps goes to ckpt (batch, d, n_chunks, N) for the backward."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d, offs_n, mask_d, mask_n, mask_dn = _block(pid_d, dim, d_state, BLOCK_D, BLOCK_N)
    A = _tile(A_ptr, offs_d, offs_n, s_ad, s_an, mask_dn)
    D = _vector(D_ptr, offs_d, mask_d, HAS_D)
    bias = _vector(bias_ptr, offs_d, mask_d, HAS_BIAS)
    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    t_row = dt_ptr + pid_b * s_tb + offs_d * s_td
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    o_row = out_ptr + pid_b * s_ob + offs_d * s_od
    # fixed coefficients are one (BLOCK_D, BLOCK_N) tile; otherwise one (N,) row per step for the block's group
    b_tile = _tile(B_ptr, offs_d, offs_n, s_bd, s_bn, mask_dn)
    c_tile = _tile(C_ptr, offs_d, offs_n, s_cd, s_cn, mask_dn)
    b_row = B_ptr + pid_b * s_bb + ((pid_d * BLOCK_D) // b_cpg) * s_bg + offs_n * s_bn
    c_row = C_ptr + pid_b * s_cb + ((pid_d * BLOCK_D) // c_cpg) * s_cg + offs_n * s_cn
    k_tile = ckpt_ptr + ((pid_b * dim + offs_d[:, None]) * n_chunks) * d_state + offs_n[None, :]
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(0, n_chunks):
        if SAVE:
            tl.store(k_tile + c * d_state, h, mask=mask_dn)
        for t in range(c * CHUNK, tl.minimum((c + 1) * CHUNK, seqlen)):
            u = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(t_row + t * s_tl, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.where(dt < -15.0, tl.exp(dt), tl.log(1.0 + tl.exp(dt))))
            if B_FIXED:
                b_t = b_tile
            else:
                b_t = tl.load(b_row + t * s_bl, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            if C_FIXED:
                c_t = c_tile
            else:
                c_t = tl.load(c_row + t * s_cl, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * b_t
            y = tl.sum(h * c_t, axis=1)
            if HAS_D:
                y += D * u
            if HAS_Z:
                zt = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0).to(tl.float32)
                y = y * zt * (1.0 / (1.0 + tl.exp(-zt)))
            tl.store(o_row + t * s_ol, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * d_state + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def scan_bwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, g_ptr, glast_ptr, ckpt_ptr, ws_ptr,
        du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        dim, seqlen, d_state, n_chunks, b_cpg, c_cpg, n_groups_b, n_groups_c,
        s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl, s_ad, s_an,
        s_bb, s_bg, s_bd, s_bn, s_bl, s_cb, s_cg, s_cd, s_cn, s_cl,
        B_FIXED: tl.constexpr, C_FIXED: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_GLAST: tl.constexpr, CHUNK: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Gradients of :func:`scan_fwd_kernel`, chunks last to first: the chunk's states are recomputed from its
    checkpoint into this program's (CHUNK, BLOCK_D, BLOCK_N) workspace, then the adjoint
    lam_t = C_t gy_t + exp(dt_{t+1} A) lam_{t+1} runs backwards through the chunk.

    du, ddt, dz: (batch, d, L) by the strides of u, dt, z; dA, fixed dB/dC: (batch, d, N) fp32 per-batch
    partial sums; dD, dbias: (batch, d) likewise; selective/grouped dB, dC: (batch, G, N, L) fp32, zeroed,
    added to atomically (several channel blocks share a group)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d, offs_n, mask_d, mask_n, mask_dn = _block(pid_d, dim, d_state, BLOCK_D, BLOCK_N)
    A = _tile(A_ptr, offs_d, offs_n, s_ad, s_an, mask_dn)
    D = _vector(D_ptr, offs_d, mask_d, HAS_D)
    bias = _vector(bias_ptr, offs_d, mask_d, HAS_BIAS)
    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    t_row = dt_ptr + pid_b * s_tb + offs_d * s_td
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    g_row = g_ptr + pid_b * s_gb + offs_d * s_gd
    du_row = du_ptr + pid_b * s_ub + offs_d * s_ud
    ddt_row = ddt_ptr + pid_b * s_tb + offs_d * s_td
    dz_row = dz_ptr + pid_b * s_zb + offs_d * s_zd
    b_tile = _tile(B_ptr, offs_d, offs_n, s_bd, s_bn, mask_dn)
    c_tile = _tile(C_ptr, offs_d, offs_n, s_cd, s_cn, mask_dn)
    gb = (pid_d * BLOCK_D) // b_cpg
    gc = (pid_d * BLOCK_D) // c_cpg
    b_row = B_ptr + pid_b * s_bb + gb * s_bg + offs_n * s_bn
    c_row = C_ptr + pid_b * s_cb + gc * s_cg + offs_n * s_cn
    # selective/grouped gradients: contiguous fp32 (batch, G, N, L)
    db_row = dB_ptr + ((pid_b * n_groups_b + gb) * d_state + offs_n) * seqlen
    dc_row = dC_ptr + ((pid_b * n_groups_c + gc) * d_state + offs_n) * seqlen
    k_tile = ckpt_ptr + ((pid_b * dim + offs_d[:, None]) * n_chunks) * d_state + offs_n[None, :]
    per_batch = (pid_b * dim + offs_d[:, None]) * d_state + offs_n[None, :]  # (batch, d, N) partial sums
    ws_tile = ws_ptr + (pid_b * tl.num_programs(1) + pid_d) * (CHUNK * BLOCK_D * BLOCK_N) \
        + tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
    if HAS_GLAST:
        lam = tl.load(glast_ptr + per_batch, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        lam = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dB_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dC_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        t0 = c * CHUNK
        steps = tl.minimum(t0 + CHUNK, seqlen) - t0
        # 1. the states before each step of the chunk, from its checkpoint
        h = tl.load(k_tile + c * d_state, mask=mask_dn, other=0.0)
        for i in range(0, steps):
            tl.store(ws_tile + i * (BLOCK_D * BLOCK_N), h)
            t = t0 + i
            u = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(t_row + t * s_tl, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.where(dt < -15.0, tl.exp(dt), tl.log(1.0 + tl.exp(dt))))
            if B_FIXED:
                b_t = b_tile
            else:
                b_t = tl.load(b_row + t * s_bl, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * b_t
        tl.debug_barrier()  # the workspace is read back by other threads of the program
        # 2. backwards through the chunk
        for j in range(0, steps):
            i = steps - 1 - j
            t = t0 + i
            h_prev = tl.load(ws_tile + i * (BLOCK_D * BLOCK_N))
            u = tl.load(u_row + t * s_ul, mask=mask_d, other=0.0).to(tl.float32)
            dt_raw = tl.load(t_row + t * s_tl, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt_raw = dt_raw + bias
            dt = dt_raw
            if SOFTPLUS:
                e = tl.exp(dt_raw)
                dt = tl.where(dt_raw > 20.0, dt_raw, tl.where(dt_raw < -15.0, e, tl.log(1.0 + e)))
            if B_FIXED:
                b_t = b_tile
            else:
                b_t = tl.load(b_row + t * s_bl, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            if C_FIXED:
                c_t = c_tile
            else:
                c_t = tl.load(c_row + t * s_cl, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            g = tl.load(g_row + t * s_gl, mask=mask_d, other=0.0).to(tl.float32)
            decay = tl.exp(dt[:, None] * A)
            h = decay * h_prev + (dt * u)[:, None] * b_t
            if HAS_Z:
                # out = (y + D u) silu(z): d/dz = (y + D u) silu'(z), silu'(z) = s (1 + z (1 - s))
                zt = tl.load(z_row + t * s_zl, mask=mask_d, other=0.0).to(tl.float32)
                sz = 1.0 / (1.0 + tl.exp(-zt))
                pre = tl.sum(h * c_t, axis=1)
                if HAS_D:
                    pre += D * u
                tl.store(dz_row + t * s_zl, (g * pre * sz * (1.0 + zt * (1.0 - sz))).to(dz_ptr.dtype.element_ty),
                         mask=mask_d)
                g = g * zt * sz
            if HAS_D:
                dD_acc += g * u
            # dC_t = sum over the block's channels of gy_t h_t (fixed: per channel)
            if C_FIXED:
                dC_acc += g[:, None] * h
            else:
                tl.atomic_add(dc_row + t, tl.sum(g[:, None] * h, axis=0), mask=mask_n)
            lam += g[:, None] * c_t
            du = dt * tl.sum(lam * b_t, axis=1)
            if HAS_D:
                du += g * D
            if B_FIXED:
                dB_acc += lam * (dt * u)[:, None]
            else:
                tl.atomic_add(db_row + t, tl.sum(lam * (dt * u)[:, None], axis=0), mask=mask_n)
            lam_decay_h = lam * decay * h_prev
            d_dt = tl.sum(lam_decay_h * A + lam * b_t * u[:, None], axis=1)
            dA_acc += lam_decay_h * dt[:, None]
            lam = lam * decay
            if SOFTPLUS:
                d_dt = d_dt * (1.0 / (1.0 + tl.exp(-dt_raw)))
            dbias_acc += d_dt
            tl.store(du_row + t * s_ul, du.to(du_ptr.dtype.element_ty), mask=mask_d)
            tl.store(ddt_row + t * s_tl, d_dt.to(ddt_ptr.dtype.element_ty), mask=mask_d)
        tl.debug_barrier()  # the next chunk overwrites the workspace
    tl.store(dA_ptr + per_batch, dA_acc, mask=mask_dn)
    if B_FIXED:
        tl.store(dB_ptr + per_batch, dB_acc, mask=mask_dn)
    if C_FIXED:
        tl.store(dC_ptr + per_batch, dC_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


@triton.jit
def state_update_kernel(
        state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
        nheads, dim, d_state, heads_per_group,
        s_hb, s_hh, s_hd, s_hn, s_xb, s_xh, s_xd, s_tb, s_th, s_td, s_zb, s_zh, s_zd, s_ob, s_oh, s_od,
        s_ah, s_ad, s_an, s_bb, s_bg, s_bn, s_cb, s_cg, s_cn, s_dh, s_dd, s_eh, s_ed,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """One decode step of (batch, head, block of channels): h = exp(dt A) h + dt B x in place,
    out = (<h, C> + D x) silu(z). Without heads the host passes nheads = 1 and zero head strides."""
    pid_bh = tl.program_id(0)
    pid_b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    group = head // heads_per_group
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    s_tile = state_ptr + pid_b * s_hb + head * s_hh + offs_d[:, None] * s_hd + offs_n[None, :] * s_hn
    h = tl.load(s_tile, mask=mask_dn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_xb + head * s_xh + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_tb + head * s_th + offs_d * s_td, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + head * s_eh + offs_d * s_ed, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.where(dt < -15.0, tl.exp(dt), tl.log(1.0 + tl.exp(dt))))
    A = tl.load(A_ptr + head * s_ah + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn,
                other=0.0).to(tl.float32)
    B = tl.load(B_ptr + pid_b * s_bb + group * s_bg + offs_n * s_bn, mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + pid_b * s_cb + group * s_cg + offs_n * s_cn, mask=mask_n, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
    tl.store(s_tile, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    out = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        out += x * tl.load(D_ptr + head * s_dh + offs_d * s_dd, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_zb + head * s_zh + offs_d * s_zd, mask=mask_d, other=0.0).to(tl.float32)
        out = out * z * (1.0 / (1.0 + tl.exp(-z)))
    tl.store(out_ptr + pid_b * s_ob + head * s_oh + offs_d * s_od, out.to(out_ptr.dtype.element_ty), mask=mask_d)
