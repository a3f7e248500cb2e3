#!/usr/bin/env python3
"""Fit the exp(r) polynomial used by src/simd/exp.rs.

Method: Remez exchange algorithm (mpmath, 50 digits) for the minimax RELATIVE error of
    e^r ~= 1 + c1 r + c2 r^2 + ... + cn r^n     on  r in [-A, A],
with the constant term pinned to exactly 1 (so exp(0) == 1 exactly). A is ln(2)/2 plus a small
margin for the rounding of x*log2(e) in the range reduction.
Rounding to f32 is done coefficient by coefficient from the lowest order up: c1 is rounded to the
nearest f32 and frozen, the remaining c2..cn are re-fitted by Remez with c1 fixed, then c2 is
rounded and frozen, and so on (rounding the low-order terms naively costs most of the accuracy).
The relative error of the final f32 polynomial (exact arithmetic) is reported on a dense grid.

Usage: python3 tools/fit_exp_poly.py [degree]
"""
import sys
import numpy as np
import mpmath as mp

mp.mp.dps = 50
DEG = int(sys.argv[1]) if len(sys.argv) > 1 else 6
A = mp.mpf("0.3466")  # ln2/2 = 0.34657359..., plus margin


def poly(c, r):
    # c = [c1..cn]; constant term 1
    acc = mp.mpf(0)
    for ci in reversed(c):
        acc = acc * r + ci
    return 1 + acc * r


def rel_err(c, r):
    e = mp.exp(r)
    return (poly(c, r) - e) / e


def solve(ref, frozen):
    # frozen = [c1..cf] fixed; unknowns c(f+1)..cn and E; equations at the reference points:
    #   1 + sum_i ci r^i - e^r = (-1)^j E e^r
    f = len(frozen)
    n = DEG - f
    M = mp.matrix(n + 1, n + 1)
    b = mp.matrix(n + 1, 1)
    for j, r in enumerate(ref):
        e = mp.exp(r)
        for i in range(n):
            M[j, i] = r ** (f + 1 + i)
        M[j, n] = -((-1) ** j) * e
        b[j] = e - 1 - sum(ci * r ** (i + 1) for i, ci in enumerate(frozen))
    sol = mp.lu_solve(M, b)
    return list(frozen) + [sol[i] for i in range(n)], sol[n]


def extrema(c, npts=4000):
    xs = [-A + 2 * A * k / npts for k in range(npts + 1)]
    ys = [rel_err(c, x) for x in xs]
    # local extrema of the error curve, including the end points
    idx = [0]
    for k in range(1, npts):
        if (ys[k] - ys[k - 1]) * (ys[k + 1] - ys[k]) <= 0:
            idx.append(k)
    idx.append(npts)
    # refine each interior extremum with golden-section on |err|
    pts = []
    for k in idx:
        if k in (0, npts):
            pts.append(xs[k])
            continue
        lo, hi = xs[k - 1], xs[k + 1]
        sgn = 1 if ys[k] > 0 else -1
        f = lambda t: -sgn * rel_err(c, t)
        pts.append(mp.findroot(lambda t: mp.diff(f, t), xs[k]) if False else golden(f, lo, hi))
    return pts


def golden(f, a, b, it=80):
    g = (mp.sqrt(5) - 1) / 2
    c = b - g * (b - a)
    d = a + g * (b - a)
    for _ in range(it):
        if f(c) < f(d):
            b = d
        else:
            a = c
        c = b - g * (b - a)
        d = a + g * (b - a)
    return (a + b) / 2


def pick_alternating(c, pts, m):
    # merge consecutive same-sign points keeping the largest |err|; then keep the m largest
    # contiguous alternating window
    vals = [(p, rel_err(c, p)) for p in sorted(pts)]
    merged = []
    for p, v in vals:
        if merged and mp.sign(merged[-1][1]) == mp.sign(v):
            if abs(v) > abs(merged[-1][1]):
                merged[-1] = (p, v)
        else:
            merged.append((p, v))
    while len(merged) > m:
        # drop the smaller end
        if abs(merged[0][1]) < abs(merged[-1][1]):
            merged.pop(0)
        else:
            merged.pop()
    return [p for p, _ in merged]


def remez(frozen):
    m = DEG - len(frozen) + 1
    # Chebyshev extrema as the initial reference
    ref = [A * mp.cos(mp.pi * (m - 1 - j) / (m - 1)) for j in range(m)]
    for it in range(40):
        c, E = solve(ref, frozen)
        pts = extrema(c, 2000)
        new = pick_alternating(c, pts, m)
        errs = [abs(rel_err(c, p)) for p in new]
        spread = (max(errs) - min(errs)) / max(errs)
        if len(new) == m:
            ref = new
        if len(new) == m and spread < mp.mpf("1e-6"):
            break
    return c, E, it + 1, spread


def main():
    c, E, its, spread = remez([])
    print(f"degree {DEG}: unconstrained minimax |E| = {mp.nstr(abs(E), 6)}"
          f" = 2^{mp.nstr(mp.log(abs(E), 2), 5)} ({its} iterations, spread {mp.nstr(spread, 3)})")
    frozen = []
    while len(frozen) < DEG:
        frozen.append(mp.mpf(float(np.float32(float(c[len(frozen)])))))
        if len(frozen) < DEG:
            c, E, its, spread = remez(frozen)
            print(f"  froze c1..c{len(frozen)}: re-fitted |E| = {mp.nstr(abs(E), 6)}"
                  f" = 2^{mp.nstr(mp.log(abs(E), 2), 5)} ({its} it.)")
    for i, ci in enumerate(frozen, start=1):
        f = np.float32(float(ci))
        print(f"  c{i} = {float(f)!r:>24}  bits 0x{f.view(np.uint32):08x}  ({np.format_float_scientific(f, unique=True)})")
    worst = max(abs(rel_err(frozen, -A + 2 * A * k / 20000)) for k in range(20001))
    print(f"  rel. error of the f32 polynomial (exact arithmetic): {mp.nstr(worst, 6)}"
          f" = 2^{mp.nstr(mp.log(worst, 2), 5)}  (f32 half-ulp is 2^-24..2^-25 relative)")


if __name__ == "__main__":
    main()
