"""awch_scale.linalg.lanczos (thick-restart Lanczos, partial reorthogonalisation against the kept
Ritz vectors, basis in the products' dtype) against dense float64 ``eigh``.

Tolerances are relative to |lambda_1|: float64 operators 1e-10 (observed ~1e-14),
float32 bases 1e-6 on eigenvalues (observed ~2e-8) and 1e-5 on residuals (observed 2e-7,
the float32 products' own level).
"""

from __future__ import annotations

import dense_reference as ref
import numpy as np
import pytest
import torch

from awch_scale.errors import ConvergenceError
from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.linalg.lanczos import thick_restart_lanczos
from awch_scale.model.operators import HessianOperator
from awch_scale.model.problem import make_problem
from benchmarks.common import HostReads


def _matvec(A: torch.Tensor):
    def mv(v):
        return A @ v.to(torch.float64)
    return mv


def _check(out, A, k, atol):
    vals = np.linalg.eigvalsh(A.numpy())[::-1]
    scale = abs(vals[0])
    np.testing.assert_allclose(out.values, vals[:k], rtol=0, atol=atol * scale)
    V = out.vectors.numpy()
    np.testing.assert_allclose(V.T @ V, np.eye(k), rtol=0, atol=1e-10)
    res = np.linalg.norm(A.numpy() @ V - V * out.values, axis=0) / scale
    return res


def test_restarts_with_and_without_partial_reorthogonalisation():
    """A power-law spectrum with a small basis (many thick restarts): the default eta skips
    the kept Ritz vectors at some steps and gives the eigenpairs of a full pass at every
    step (eta = 0) and of dense eigh."""
    D, k = 400, 12
    A = torch.from_numpy(ref.matrix_with_spectrum(1.0 / np.arange(1, D + 1) ** 0.8))
    full = thick_restart_lanczos(_matvec(A), D, k, basis=24, tol=1e-11, eta=0.0)
    part = thick_restart_lanczos(_matvec(A), D, k, basis=24, tol=1e-11,
                                 check_estimates=True)
    assert full.converged and part.converged and full.n_restarts >= 3
    assert full.kept_passes == full.n_products - 24 - full.n_restarts
    steps_after_restarts = part.n_products - 24 - part.n_restarts
    assert part.kept_passes < steps_after_restarts  # it did skip the kept vectors
    # where it skipped them, the estimate bounded the measured orthogonality, and that
    # stayed below eta = sqrt(eps)
    measured, estimated = np.array(part.checks).T
    assert len(measured) == steps_after_restarts - part.kept_passes
    assert np.all(measured <= estimated) and measured.max() <= np.finfo(float).eps ** 0.5
    for out in (full, part):
        assert _check(out, A, k, 1e-10).max() <= 1e-9
    np.testing.assert_allclose(part.values, full.values, rtol=0, atol=1e-12)


def test_float32_basis_with_float64_correction():
    """A float32 basis (the dtype of a float32 model's products): eigenvalues within 1e-6
    of dense float64, and top_eigenpairs' float64 Rayleigh quotients within 1e-9."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 40), torch.nn.Tanh(),
                                torch.nn.Linear(40, 30, bias=False), torch.nn.Tanh(),
                                torch.nn.Linear(30, 5))
    x, y = torch.randn(200, 10), torch.randint(0, 5, (200,))
    p32 = make_problem(model, "2", x, y, "ce")
    p64 = make_problem(model, "2", x, y, "ce", dtype=torch.float64)
    assert p32.dtype == torch.float32
    H = HessianOperator(p64).to_dense().numpy()
    vals = np.linalg.eigvalsh(H)[::-1]
    k = 20
    basis = top_eigenpairs(HessianOperator(p32), k, method="lanczos", seed=1)
    assert basis.method == "lanczos"
    np.testing.assert_allclose(basis.values, vals[:k], rtol=0, atol=1e-6 * vals[0])
    V = basis.vectors.numpy()
    assert basis.vectors.dtype == torch.float64
    np.testing.assert_allclose(V.T @ V, np.eye(k), rtol=0, atol=1e-10)
    # the stored values are the Rayleigh quotients of the returned vectors (float32 H
    # products, so compared with the float64 quotient at 1e-6)
    np.testing.assert_allclose(basis.values, np.einsum("ij,ij->j", V, H @ V), rtol=0,
                               atol=1e-6 * vals[0])
    assert basis.residuals.max() <= 1e-5


def test_invariant_subspace_rank_below_k():
    """A rank-3 operator and k = 5: the Krylov space closes after 3 steps, the solver goes
    on from fresh directions and returns the 3 eigenvalues and two zeros."""
    D, k = 60, 5
    lam = np.zeros(D)
    lam[:3] = [3.0, 2.0, 1.0]
    A = torch.from_numpy(ref.matrix_with_spectrum(lam, seed=2))
    out = thick_restart_lanczos(_matvec(A), D, k, tol=1e-10)
    assert out.converged
    _check(out, A, k, 1e-12)


def test_basis_as_large_as_D_is_exact():
    D = 20
    A = torch.from_numpy(ref.matrix_with_spectrum(np.linspace(-1.0, 2.0, D), seed=3))
    out = thick_restart_lanczos(_matvec(A), D, D - 1, tol=1e-14)
    assert out.converged and out.n_restarts == 0
    _check(out, A, D - 1, 1e-12)


def test_budget_exhausted_is_a_convergence_error_naming_the_knobs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                                torch.nn.Linear(12, 10, bias=False), torch.nn.Tanh(),
                                torch.nn.Linear(10, 3))
    p = make_problem(model, "2", torch.randn(50, 6), torch.randint(0, 3, (50,)), "ce",
                     dtype=torch.float64)
    with pytest.raises(ConvergenceError, match="analysis.eigen.maxiter or ncv"):
        top_eigenpairs(HessianOperator(p), 10, method="lanczos", tol=1e-14, maxiter=0,
                       ncv=12)


def test_argument_checks():
    A = torch.from_numpy(ref.matrix_with_spectrum(np.arange(10.0)))
    with pytest.raises(ValueError, match="k = 10"):
        thick_restart_lanczos(_matvec(A), 10, 10)
    with pytest.raises(ValueError, match="basis size 3"):
        thick_restart_lanczos(_matvec(A), 10, 3, basis=3)
    with pytest.raises(ValueError, match="rel_to"):
        thick_restart_lanczos(_matvec(A), 10, 3, rel_to="last")



def test_few_host_round_trips_per_step():
    """A step reads two pairs of scalars (alpha with ||w||, the Gram-Schmidt diagonal with
    beta), so with the per-restart reads the solver makes at most 2.5 conversions per
    product (measured 2.24 here; 6.5 when each scalar was read on its own), and still
    finds the dense eigenvalues."""
    torch.manual_seed(0)
    D, k = 400, 20
    A = torch.randn(D, D, dtype=torch.float64)
    A = (A + A.T) / 2
    with HostReads() as reads:
        out = thick_restart_lanczos(_matvec(A), D, k, dtype=torch.float32)
    assert out.converged and out.n_restarts > 3
    assert reads.count / out.n_products <= 2.5, (reads.count, out.n_products)
    _check(out, A, k, atol=1e-6)


PEAK_CHILD = """
import sys
import numpy as np
import torch
from awch_scale.linalg.lanczos import thick_restart_lanczos
torch.set_num_threads(1)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def run(D, k):
    d = torch.from_numpy(1.0 / np.arange(1, D + 1) ** 1.5)
    return thick_restart_lanczos(lambda v: d * v.to(torch.float64), D, k,
                                 dtype=torch.float32)

run(2000, 5)
D = int(sys.argv[1])
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
out = run(D, 20)
print((status("VmHWM") - base) / D, out.converged)
"""


def test_ritz_vectors_do_not_coexist_with_the_basis():
    """The float64 Ritz vectors are formed after the float32 basis is dropped. Bytes per
    D of the peak (a child process's own VmHWM, k = 20, m = 41, D = 2e6): the basis
    4 (m + 1) = 168, its 20 leading rows copied out 80, a float64 diagonal operator and
    O(D) float64 work vectors, measured 277; with the basis and the (D, k) float64 vectors
    side by side it was 168 + 160 + the same, measured 363. Bound 320. The child's
    allocations above 128 KiB are mmap'ed (MALLOC_MMAP_THRESHOLD_), so that freed vectors
    leave its resident memory at once: with glibc's adaptive threshold the same runs read
    312-360 and 392-428 (heap reuse)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PEAK_CHILD, "2000000"], capture_output=True,
                          text=True, timeout=300, check=True, env=env)
    per_d, converged = done.stdout.split()
    assert converged == "True"
    assert float(per_d) <= 320, per_d
