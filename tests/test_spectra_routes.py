"""The spectra stage's routes (issue 17) against dense float64 references.

- every route (dense, Gram, Krylov, and ARPACK, the reference) gives m_eigval, c_eigval,
  hp_eigval_top, hp_eigval_bottom within 1e-6 of their scale (|lambda_1(H)| for H_p, the
  largest eigenvalue of M or C for those) and both principal cosines within 1e-6, on
  blocks wide enough (D = 384) that the Krylov bases are far from the whole space, for
  ce, mse and lmse, an MLP and a CNN head;
- a top of H_p that is a null space of multiplicity larger than r (inputs with zero
  coordinates: M and H share e_o (x) e_j for every zero input j) is right on the dense
  route and on the block Krylov route; a synthetic operator whose top is a cluster
  larger than r is right with the block Krylov solver;
- the densities of M and H_p integrate to 1 on the shared grid, put no mass outside
  their operator's spectrum, and have the first moments tr(M)/D, tr(H_p)/D (M's from its
  exact spectrum; H_p's by SLQ, within 3 of the Hutchinson standard errors, computed
  densely); H's density alone is the old ``broadened_density``;
- sub-parts switch off; no ARPACK on the default route; M and H_p share the Hessian's
  TargetLayer (no second one is built).
"""

from __future__ import annotations

import functools

import dense_reference as ref
import numpy as np
import pytest
import torch

from awch_scale.analysis.spectra import PARTS, spectra_variables
from awch_scale.analysis.spectra_krylov import krylov_both, krylov_top
from awch_scale.analysis.spectra_solvers import DenseOperator, TopSpectrum, with_zeros
from awch_scale.linalg.density import broadened_density, lanczos_quadrature
from awch_scale.linalg.eigen import top_eigenpairs
from awch_scale.model.operators import KroneckerHessianOperator
from awch_scale.model.problem import make_problem

N, B = 60, 8
WIDE = [("fc", "fc2", loss, {"hidden": (24, 16)}) for loss in ("ce", "mse", "lmse")] + [
    ("cnn", "fc1", loss, {"channels": 4, "hidden": 24}) for loss in ("ce", "mse", "lmse")]
IDS = ["-".join(c[:3]) for c in WIDE]
METHODS = ["dense", "gram", "krylov", "eigsh"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with ref.single_thread():
        yield


def _dense_case(model, target, x, y, loss):
    G = ref.per_sample_gradients(model, target, x, y, loss)
    H = ref.dense_hessian(model, target, x, y, loss)
    M = ref.dense_second_moment(G)
    C = ref.dense_covariance(G, B)
    out = {}
    for name, A in (("H", H), ("M", M), ("C", C), ("Hp", M - H)):
        vals, vecs = np.linalg.eigh(A)
        out[name] = (vals[::-1], vecs[:, ::-1], A)
    return out


@functools.cache
def wide_case(kind, target, loss, kw_items):
    model, x, y = ref.make_model(kind, N, **dict(kw_items))
    problem = make_problem(model, target, x, y, loss, chunk_size=16)
    d = _dense_case(model, target, x, y, loss)
    gaps = [min((s[r - 1] - s[r]) / abs(s[0]) for s in (d["H"][0], d["M"][0], d["C"][0]))
            for r in range(2, 7)]
    r = 2 + int(np.argmax(gaps))
    op = KroneckerHessianOperator(problem)
    basis = top_eigenpairs(op, r + 2, method="eigsh", tol=1e-12)
    return problem, op, basis, r, d, max(gaps)


def check_against_dense(data, d, r, tol=1e-6):
    lam1 = abs(d["H"][0][0])
    hp = d["Hp"][0]
    for name, want, scale in [("m_eigval", d["M"][0][:r], d["M"][0][0]),
                              ("c_eigval", d["C"][0][:r], d["C"][0][0]),
                              ("hp_eigval_top", hp[:r], lam1),
                              ("hp_eigval_bottom", hp[::-1][:r], lam1)]:
        got = data[name][1]
        assert np.all(np.isfinite(got)), name
        assert np.abs(got - want).max() <= tol * abs(scale), (name, got, want)
    Vr = d["H"][1][:, :r]
    for name, W in [("principal_cos", d["M"][1][:, :r]), ("hc_principal_cos", d["C"][1][:, :r])]:
        want = np.linalg.svd(Vr.T @ W, compute_uv=False)
        assert np.abs(data[name][1] - want).max() <= tol, name


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", WIDE, ids=IDS)
def test_every_route_against_dense(case, method):
    kind, target, loss, kw = case
    problem, op, basis, r, d, gap = wide_case(kind, target, loss, tuple(kw.items()))
    assert problem.D == 384 and gap > 1e-3
    prov = {}
    data, _ = spectra_variables(problem, op, basis.vectors, basis.values, r=r, batch_size=B,
                                seed=3, tol=1e-10, method=method, maxiter=200,
                                provenance=prov)
    assert "spectra_notes" not in prov, prov.get("spectra_notes")
    check_against_dense(data, d, r)
    if method == "krylov":  # a real Krylov space: the basis is << D
        assert prov["spectra_routes"]["hp_top"] == "lanczos, both ends"


def zero_input_case(loss="lmse", act="relu"):
    """fc1 (20 -> 16, D = 320) of a ReLU MLP whose inputs have 14 of 20 coordinates zero:
    M and H vanish on e_o (x) e_j for every zero input j, a common null space of dimension
    16 * 14 = 224 > r. Under lmse with residuals ||f - y||^2 < K/2 every per-sample
    delta delta^T - Q is negative semidefinite, so H_p <= 0: its top is that cluster, and
    its next eigenvalue is -3.8e-4 |lambda_1(H)| (the shape of issue 17's failure: the
    path before it, ARPACK on M - H + lambda_1 I at tol 1e-4, stored [0, -3.8e-4,
    -4.9e-4, -6.4e-4, -6.6e-4, -9.1e-4] |lambda_1(H)| for the top 6 here, all zero)."""
    model = ref.make_fc(d_in=20, hidden=(16, 4), act=act)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(N, 20, dtype=torch.float64, generator=gen)
    x[:, 6:] = 0.0
    y = torch.randint(0, 4, (N,), generator=gen)
    return model, x, y, make_problem(model, "fc1", x, y, loss, chunk_size=16)


@pytest.mark.parametrize("method", ["auto", "krylov"])
def test_null_space_larger_than_r_on_top_of_hp(method):
    model, x, y, problem = zero_input_case()
    d = _dense_case(model, "fc1", x, y, "lmse")
    hp, lam1 = d["Hp"][0], abs(d["H"][0][0])
    r = 6
    zero = np.abs(hp) <= 1e-12 * lam1
    assert zero.sum() >= 224 > r and (hp > 1e-12 * lam1).sum() == 0  # the top is the cluster
    op = KroneckerHessianOperator(problem)
    basis = top_eigenpairs(op, r, method="eigsh", tol=1e-12)
    prov = {}
    data, _ = spectra_variables(problem, op, basis.vectors, basis.values, r=r, batch_size=B,
                                tol=1e-8, method=method, maxiter=200, provenance=prov,
                                parts=("hp_top", "hp_bottom"))
    got = data["hp_eigval_top"][1]
    assert np.all(np.isfinite(got)), prov.get("spectra_notes")
    assert np.abs(got - hp[:r]).max() <= 1e-6 * lam1
    assert np.abs(data["hp_eigval_bottom"][1] - hp[::-1][:r]).max() <= 1e-6 * lam1
    if method == "krylov":  # the top: certified 0 by the bounds (no solve); the bottom:
        # solved on the coordinates outside the dead inputs' null space (deflated)
        assert prov["spectra_routes"]["hp_top"].startswith("no solve; 6 of 6 certified 0")
        assert "+ 224 exact zeros" in prov["spectra_routes"]["hp_bottom"]


def cluster_operator():
    """A 300 x 300 matrix whose top is 2 simple eigenvalues and a 12-fold eigenvalue 0,
    the rest spread below."""
    rng = np.random.default_rng(0)
    lam = np.concatenate([[0.7, 0.4], np.zeros(12), -rng.uniform(0.05, 1.0, 286)])
    Q = np.linalg.qr(rng.standard_normal((300, 300)))[0]
    return DenseOperator(torch.from_numpy((Q * lam) @ Q.T))


def test_block_krylov_sees_a_cluster_larger_than_r():
    """Top r = 5 by the block solver: every value right to 1e-8."""
    got = krylov_top(cluster_operator(), 5, tol=1e-9, scale=1.0, seed=0, block=8,
                     maxiter=200)
    assert got.note is None
    np.testing.assert_allclose(got.values, [0.7, 0.4, 0, 0, 0], rtol=0, atol=1e-8)


def test_lanczos_miss_is_caught_by_the_complement_check():
    """Lanczos alone holds one direction of the 12-fold 0 and returns negative values
    for ranks 4 and 5 with small residuals; the complement check finds the missed 0 and
    the block solver gets every value right. Without the check those values would be
    stored wrong, with done set."""
    alone = krylov_top(cluster_operator(), 5, tol=1e-9, scale=1.0, seed=0, maxiter=200)
    assert alone.route == "lanczos" and alone.values[-1] < -1e-3 and alone.note is None
    got = krylov_top(cluster_operator(), 5, tol=1e-9, scale=1.0, seed=0, maxiter=200,
                     verify=20)
    assert got.route.startswith("lanczos, missed") and got.note is None
    np.testing.assert_allclose(got.values, [0.7, 0.4, 0, 0, 0], rtol=0, atol=1e-8)


def test_merging_known_zeros():
    top = TopSpectrum(np.array([0.5, -0.1, -0.2]), route="lanczos")
    np.testing.assert_array_equal(with_zeros(top, 2, 3).values, [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(with_zeros(top, 0, 3).values, [0.5, -0.1, -0.2])
    nan = TopSpectrum(np.array([0.5, -0.1, np.nan]), route="lanczos")
    np.testing.assert_array_equal(with_zeros(nan, 1, 3).values, [0.5, 0.0, -0.1])
    nan = TopSpectrum(np.array([-0.5, np.nan, np.nan]), route="lanczos")
    np.testing.assert_array_equal(with_zeros(nan, 1, 3).values, [0.0, -0.5, np.nan])


def test_densities_of_m_and_hp():
    problem, op, basis, r, d, _ = wide_case("fc", "fc2", "ce", (("hidden", (24, 16)),))
    D = problem.D
    prov = {}
    probes = 30
    data, coords = spectra_variables(problem, op, basis.vectors, basis.values, r=r,
                                     batch_size=B, probes=probes, steps=60, grid_size=400,
                                     seed=3, method="gram", provenance=prov)
    assert prov["spectra_routes"]["density_m"] == "exact"
    grid = coords["grid"]
    for name, key in (("density", "H"), ("density_m", "M"), ("density_hp", "Hp")):
        dens, (vals, _, A) = data[name][1], d[key]
        assert np.all(dens >= 0) and abs(np.trapezoid(dens, grid) - 1) <= 1e-12, name
        outside = (grid < vals[-1] - 1e-9 * abs(vals[0])) | (grid > vals[0] * (1 + 1e-9))
        assert np.all(dens[outside] == 0), name
        first = np.trapezoid(dens * grid, grid)
        if name == "density_m":  # exact spectrum: only the broadening's truncation
            assert abs(first - np.trace(A) / D) <= 0.05 * np.abs(vals).max()
        else:  # SLQ: its first moment is the Hutchinson estimate of tr(A)/D
            se = np.sqrt(2 * (np.sum(A ** 2) - np.sum(np.diag(A) ** 2)) / probes) / D
            assert abs(first - np.trace(A) / D) <= 3 * se + 0.01 * np.abs(vals).max(), name
    assert grid[0] <= d["Hp"][0][-1] + 1e-9 and grid[-1] >= d["M"][0][0] - 1e-9


def test_h_density_alone_is_unchanged():
    problem, op, basis, r, _, _ = wide_case("fc", "fc2", "mse", (("hidden", (24, 16)),))
    data, coords = spectra_variables(problem, op, basis.vectors, basis.values, r=r,
                                     batch_size=B, probes=5, steps=20, grid_size=100,
                                     seed=2, parts=("density",))
    quad = lanczos_quadrature(op, 5, 20, 2)
    grid, want = broadened_density(quad, 100, 1e-2, upper=float(basis.values[0]))
    np.testing.assert_allclose(coords["grid"], grid, rtol=1e-13)
    np.testing.assert_allclose(data["density"][1], want, rtol=1e-10, atol=1e-13 * want.max())


def test_parts_switch_off_and_provenance():
    problem, op, basis, r, _, _ = wide_case("fc", "fc2", "lmse", (("hidden", (24, 16)),))
    prov = {}
    data, coords = spectra_variables(problem, op, basis.vectors, basis.values, r=r,
                                     batch_size=B, parts=("m", "trace"), provenance=prov)
    assert set(data) == {"m_eigval", "principal_cos", "hess_trace", "hess_trace_se",
                         "seconds_spectra"}
    assert "grid" not in coords
    assert set(prov["spectra_seconds"]) >= {"operators", "m", "trace"}
    with pytest.raises(ValueError, match="unknown spectra parts"):
        spectra_variables(problem, op, basis.vectors, basis.values, r=r, batch_size=B,
                          parts=("m", "eigen"))
    data, _ = spectra_variables(problem, op, basis.vectors, basis.values, r=r, batch_size=B,
                                parts=PARTS, provenance=prov)
    assert {"density_m", "density_hp", "density"} <= set(data)


def test_no_arpack_and_one_target_layer_on_the_default_route(monkeypatch):
    """Beyond the dense route (dense_max = 0), the default runs neither scipy's eigsh nor
    a second TargetLayer (M and H_p use the Hessian's)."""
    import awch_scale.linalg.eigen as eigen
    import awch_scale.model.target as target

    problem, op, basis, r, d, _ = wide_case("cnn", "fc1", "ce",
                                            (("channels", 4), ("hidden", 24)))

    def no_arpack(*a, **kw):
        raise AssertionError("ARPACK on a default path")

    built = []
    real_init = target.TargetLayer.__init__

    def counting(self, *a, **kw):
        built.append(1)
        real_init(self, *a, **kw)

    monkeypatch.setattr(eigen, "eigsh", no_arpack)
    monkeypatch.setattr(target.TargetLayer, "__init__", counting)
    data, _ = spectra_variables(problem, op, basis.vectors, basis.values, r=r, batch_size=B,
                                tol=1e-9, dense_max=0, maxiter=200)
    assert not built
    check_against_dense(data, d, r)


@pytest.mark.parametrize("loss", ["ce", "mse", "lmse"])
def test_certified_bounds_on_the_top_of_hp(loss):
    """0 <= lambda_j(H_p) <= u_j (hp_bounds) on a ReLU MLP (exact factors), dense
    reference; under lmse with small residuals every T_i <= 0, so u = 0: the top is
    certified 0 without a solve."""
    from awch_scale.analysis.hp_bounds import hp_top_bounds
    from awch_scale.model.operators import SecondMomentOperator

    model, x, y, problem = zero_input_case(loss)
    d = _dense_case(model, "fc1", x, y, loss)
    hp, lam1 = d["Hp"][0], abs(d["H"][0][0])
    op = KroneckerHessianOperator(problem)
    assert op.q_form == "factor"
    M = SecondMomentOperator(problem, layer=op.layer)
    r = 8
    upper = hp_top_bounds(op, M.deltas, r)
    assert upper is not None and np.all(np.diff(upper) <= 0)
    assert np.all(hp[:r] >= -1e-12 * lam1) and np.all(hp[:r] <= upper + 1e-12 * lam1)
    if loss == "lmse":
        assert upper.max() <= 1e-12 * lam1


def test_deflated_null_space_without_bounds():
    """tanh after the target: no exact factors (Q_i cached whole, no bounds), so the
    Krylov solves of both ends run on the 96 coordinates outside the dead inputs' null
    space and the 224 zeros are merged back; every value against dense eigvalsh."""
    model, x, y, problem = zero_input_case("ce", act="tanh")
    d = _dense_case(model, "fc1", x, y, "ce")
    hp, lam1 = d["Hp"][0], abs(d["H"][0][0])
    op = KroneckerHessianOperator(problem)
    assert op.q_form == "full"
    basis = top_eigenpairs(op, 6, method="eigsh", tol=1e-12)
    prov = {}
    data, _ = spectra_variables(problem, op, basis.vectors, basis.values, r=6, batch_size=B,
                                tol=1e-9, method="krylov", maxiter=200, provenance=prov,
                                parts=("hp_top", "hp_bottom"))
    for part, want in (("hp_top", hp[:6]), ("hp_bottom", hp[::-1][:6])):
        assert "+ 224 exact zeros" in prov["spectra_routes"][part]
        got = data[f"hp_eigval_{part[3:]}"][1]
        assert np.abs(got - want).max() <= 1e-6 * lam1, (part, got, want)


def test_stage_in_analyze_checkpoint():
    """The stage inside an analysis: registered variables with their accuracy attribute,
    provenance (seconds of each part, routes, scales), a part switched off by the
    settings, and two runs storing the same numbers (1e-12 relative)."""
    import json

    from awch_scale.analysis.checkpoint import analyze_checkpoint

    model, x, y = ref.make_model("fc", 40, hidden=(24, 16))

    def run(**spectra):
        return analyze_checkpoint(model, "fc2", x, y, loss="ce", batch_size=B, k=6,
                                  device="cpu", awd=None, fisher=None, stats=None,
                                  suppression=None, spectra={"r": 3, **spectra})

    a, b = run(), run()
    names = ["m_eigval", "c_eigval", "hp_eigval_top", "hp_eigval_bottom", "principal_cos",
             "hc_principal_cos", "density", "density_m", "density_hp", "density_grid",
             "hess_trace", "comm_full"]
    for name in names:
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-12, atol=0,
                                   err_msg=name)
    assert "lambda_1(H)" in a.hp_eigval_top.attrs["accuracy"]
    assert "lambda_1(M)" in a.m_eigval.attrs["accuracy"]
    prov = json.loads(str(a.provenance.values))
    # the dense route forms H and M once ("dense") and gets both ends of H_p from one
    # eigvalsh ("hp")
    assert set(prov["spectra_seconds"]) >= {"operators", "dense", "m", "c", "hp", "trace",
                                            "comm_full", "density", "density_m", "density_hp"}
    assert prov["spectra_routes"]["m"] == "dense" and prov["spectra_scale"]["hp"] > 0
    c = run(density_hp=False, comm_full=False, method="krylov")
    assert "density_hp" not in c and "comm_full" not in c and "density_m" in c
    prov = json.loads(str(c.provenance.values))
    assert {"hp_top", "hp_bottom"} <= set(prov["spectra_seconds"])
    np.testing.assert_allclose(c.hp_eigval_top.values, a.hp_eigval_top.values, rtol=0,
                               atol=1e-6 * float(a.hess_eigval[0]))


def test_lanczos_absolute_scale_leaves_the_relative_rules_alone():
    """``scale`` (absolute tolerance, the spectra's) is honoured, and without it the
    per-eigenvalue rule of the eigen stage holds: residuals <= tol |theta_i| even for
    theta_k = 1e-2 theta_1 (a regression: the solver's running |theta| once shadowed it)."""
    from awch_scale.linalg.lanczos import thick_restart_lanczos

    rng = np.random.default_rng(0)
    D = 600
    lam = np.concatenate([np.geomspace(1.0, 1e-2, 8), rng.uniform(-5e-3, 5e-3, D - 8)])
    Q = np.linalg.qr(rng.standard_normal((D, D)))[0]
    A = torch.from_numpy((Q * lam) @ Q.T)

    def matvec(v):
        return A @ v.to(torch.float64)

    rel = thick_restart_lanczos(matvec, D, 8, tol=1e-8, seed=1, rel_to="self")
    res = torch.linalg.vector_norm(A @ rel.vectors - rel.vectors * torch.from_numpy(
        rel.values), dim=0).numpy()
    assert np.all(res <= 10 * 1e-8 * np.abs(rel.values))
    loose = thick_restart_lanczos(matvec, D, 8, tol=1e-8, seed=1, rel_to="self", scale=1e5)
    assert loose.n_products < rel.n_products


def test_both_ends_from_one_lanczos_run_with_their_checks():
    """Top 5 (a 12-fold 0 among them) and bottom 4 of the cluster operator from one run
    and its shared complement check (which reruns an end with a miss), against
    eigvalsh."""
    A = cluster_operator()
    lam = np.linalg.eigvalsh(A.A.numpy())
    top, bot = krylov_both(A, DenseOperator(-A.A), 5, 4, tol=1e-9, scale=1.0, seed=0,
                           maxiter=200, verify=20)
    np.testing.assert_allclose(top.values, [0.7, 0.4, 0, 0, 0], rtol=0, atol=1e-8)
    np.testing.assert_allclose(bot.values, -lam[:4], rtol=0, atol=1e-8)
    assert bot.route == "lanczos, both ends" and top.note is None and bot.note is None


def _spectra_on(world, method):
    """spectra_variables on a world (one process or a rank of several): the values."""
    from awch_scale.world import SINGLE

    torch.set_num_threads(1)
    model, x, y = ref.make_model("fc", 41, hidden=(24, 16))
    problem = make_problem(model, "fc2", x, y, "ce", chunk_size=5)  # 9 chunks: uneven
    op = KroneckerHessianOperator(problem, world=world)
    basis = top_eigenpairs(op, 6, method="lanczos", tol=1e-10, seed=3)
    data, _ = spectra_variables(problem, op, basis.vectors, basis.values, r=4, batch_size=B,
                                tol=1e-9, method=method, maxiter=200, world=world or SINGLE)
    out = {n: np.asarray(v, dtype=float) for n, (_, v) in data.items()
           if n != "seconds_spectra"}
    if world is not None and world.size > 1:
        gathered = [None] * world.size
        torch.distributed.all_gather_object(gathered, out)
        return gathered
    return out


@pytest.mark.parametrize("method", ["gram", "krylov"])
def test_two_gloo_processes_equal_one(method):
    """The Gram and Krylov routes on 2 gloo processes: both ranks store the same numbers,
    those of one process (eigenvalues and cosines to 1e-8 of their scale; the stochastic
    estimates to 1e-8 relative: same probes, sums in another order)."""
    from awch_scale.run.launcher import run_distributed

    one = _spectra_on(None, method)
    ranks = run_distributed(_spectra_on, 2, method, backend="gloo")
    for name, want in one.items():
        scale = max(np.abs(want).max(), 1e-300)
        for got in ranks:
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-8 * scale,
                                       err_msg=name)
        np.testing.assert_allclose(ranks[1][name], ranks[0][name], rtol=0,
                                   atol=1e-12 * scale, err_msg=name)
