"""HessianOperator (matrix-free, streamed) against the dense float64 Hessian.

The reference is ``torch.func.hessian`` of the whole model (no feature caching) in
tests/dense_reference.py. Tolerances are relative to the largest entry of the
reference product (entrywise rtol fails on tiny entries):

- float64 model: max|A - B| <= 1e-10 * max|B| (observed ~1e-15);
- float32 model against the float64 Hessian of the same weights:
  max|A - B| <= 2e-4 * max|B| (observed ~1e-6; float32 eps is 1.2e-7).
"""

from __future__ import annotations

import doctest
import gc
import weakref

import dense_reference as ref
import numpy as np
import problems
import pytest
import torch
from scipy.sparse.linalg import LinearOperator

from awch_scale.model.operators import HessianOperator, KroneckerHessianOperator
from awch_scale.model.operators.base import DENSE_LIMIT
from awch_scale.model.problem import make_problem

assert_rel_close = problems.assert_rel_close

RTOL64 = 1e-10
RTOL32 = 2e-4
N = 23  # prime: no chunk size below it divides it

LOSSES = problems.LOSSES
CASES = problems.cases(problems.BASES, LOSSES, N)
F32 = problems.cases([problems.BASES[i] for i in (0, 2, 4)], LOSSES, N, dtype=torch.float32)
"""Cases repeated with a float32 model (the dense Hessian is float64 of its weights)."""
SCIPY = problems.cases(problems.BASES[:3], ["lmse"], N)


def _problem(dense, device="cpu", **kw):
    return make_problem(dense.model, dense.target, dense.x, dense.y, dense.loss,
                        device=device, **kw)


@pytest.mark.parametrize("case", CASES, ids=problems.ids(CASES))
def test_matmat_matches_dense(case, dense, device):
    H = dense.H
    # chunk 5 does not divide N = 23; max_vectors 4 < m = 11 splits the columns 4+4+3
    problem = _problem(dense, device, chunk_size=5)
    op = HessianOperator(problem, max_vectors=4)
    D = H.shape[0]
    assert problem.D == D and op.shape == (D, D)
    rng = np.random.default_rng(0)
    for m in (1, 11):
        V = torch.from_numpy(rng.standard_normal((D, m))).to(device)
        HV = problems.compare_matmat(op, H, V, RTOL64)  # float64, shape (D, m)
        assert HV.device.type == device
    v = rng.standard_normal(D)
    Hv = problems.compare_matmat(op, H, torch.from_numpy(v).to(device), RTOL64)
    assert Hv.shape == (D,)  # a 1-D vector gives a 1-D result
    problems.compare_matmat(op, H, v, RTOL64)  # NumPy input is accepted too


CNN_CE = problems.on_devices([problems.case("cnn", "fc1", "ce", N)])
FC_MSE = problems.on_devices([problems.case("fc", "fc2", "mse", N)])


@pytest.mark.parametrize("case", CNN_CE, ids=problems.ids(CNN_CE))
@pytest.mark.parametrize("chunk_size", [1, 5, 7, N, 100])
def test_chunk_size_does_not_change_result(chunk_size, case, dense, device):
    problem = _problem(dense, device, chunk_size=chunk_size)
    V = torch.from_numpy(np.random.default_rng(1).standard_normal((dense.D, 3)))
    problems.compare_matmat(HessianOperator(problem), dense.H, V, RTOL64)


@pytest.mark.parametrize("case", FC_MSE, ids=problems.ids(FC_MSE))
@pytest.mark.parametrize("max_vectors", [1, 3, 32])
def test_max_vectors_does_not_change_result(max_vectors, case, dense, device):
    problem = _problem(dense, device, chunk_size=7)
    op = HessianOperator(problem, max_vectors=max_vectors)
    V = torch.from_numpy(np.random.default_rng(2).standard_normal((dense.D, 40)))
    problems.compare_matmat(op, dense.H, V, RTOL64)
    assert op.n_products == 40 and op.n_passes == 1


@pytest.mark.parametrize("case", SCIPY, ids=problems.ids(SCIPY))
def test_to_scipy_matvec_and_matmat(case, dense, device):
    H = dense.H
    problem = _problem(dense, device, chunk_size=6)
    lin = HessianOperator(problem, max_vectors=2).to_scipy()
    D = H.shape[0]
    assert isinstance(lin, LinearOperator)
    assert lin.shape == (D, D) and lin.dtype == np.float64
    rng = np.random.default_rng(3)
    v, W = rng.standard_normal(D), rng.standard_normal((D, 5))
    out = lin.matvec(v)
    assert isinstance(out, np.ndarray) and out.shape == (D,) and out.dtype == np.float64
    assert_rel_close(out, H @ v, RTOL64)
    assert_rel_close(lin.matvec(v[:, None]), (H @ v)[:, None], RTOL64)
    assert_rel_close(lin.rmatvec(v), H @ v, RTOL64)  # symmetric
    assert_rel_close(lin.matmat(W), H @ W, RTOL64)
    assert_rel_close(lin @ W, H @ W, RTOL64)
    # a non-contiguous (Fortran-ordered / strided) input
    assert_rel_close(lin.matvec(W[:, 2]), H @ W[:, 2], RTOL64)


@pytest.mark.parametrize("case", CASES, ids=problems.ids(CASES))
def test_to_dense_is_symmetric_and_matches(case, dense, device):
    problem = _problem(dense, device, chunk_size=9)
    Hd = HessianOperator(problem).to_dense()
    assert Hd.dtype == torch.float64 and Hd.device.type == device
    # forward-over-reverse columns are symmetric up to round-off: 1e-12 relative
    problems.assert_symmetric(Hd, 1e-12)
    assert_rel_close(Hd, dense.H, RTOL64)


def test_to_dense_refuses_large_blocks(device):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(80, 80, bias=False))
    model.add_module("out", torch.nn.Linear(80, 3, bias=False))
    x, y = ref.make_data(4, (80,), 3)
    problem = make_problem(model.double(), "1", x, y, "ce", device=device)
    assert problem.D == 6400 > DENSE_LIMIT
    with pytest.raises(ValueError, match="tiny"):
        HessianOperator(problem).to_dense()


@pytest.mark.parametrize("case", F32, ids=problems.ids(F32))
def test_float32_model_against_float64_dense(case, dense, device):
    H = dense.H
    assert next(dense.model.parameters()).dtype == torch.float32
    problem = _problem(dense, device, chunk_size=5)
    assert problem.dtype == torch.float32
    V = torch.from_numpy(np.random.default_rng(4).standard_normal((H.shape[0], 6)))
    # accumulated in float64 whatever the product dtype
    problems.compare_matmat(HessianOperator(problem, max_vectors=4), H, V, RTOL32)
    # the same float32 model analysed in float64 matches to float64 precision
    problem64 = _problem(dense, device, chunk_size=5, dtype=torch.float64)
    problems.compare_matmat(HessianOperator(problem64), H, V, RTOL64)


OTHER = [  # non-Sequential models, nested names, parameter order, buffers and eval mode
    ("wrapped", "net.fc2"), ("wrapped", ("net.out.weight", "net.fc1.weight")),
    ("nested", "body.fc2"), ("nested", "body"), ("fc", ("out.weight", "fc2.weight")),
    ("bn-dropout", "fc2"), ("bn-dropout", "out"),
]
OTHER_CASES = problems.cases(OTHER, ["ce", "lmse"], N, data_seed=9)


@pytest.mark.parametrize("case", OTHER_CASES, ids=problems.ids(OTHER_CASES))
def test_other_model_structures(case, dense, device):
    problem = _problem(dense, device, chunk_size=5)
    assert_rel_close(problem.w, ref.flat_block(dense.model, dense.target), 1e-15)  # a copy
    V = torch.from_numpy(np.random.default_rng(6).standard_normal((dense.D, 5)))
    problems.compare_matmat(HessianOperator(problem, max_vectors=2), dense.H, V, RTOL64)


def _layer_inputs(model, layer_name, x):
    seen = []
    layer = dict(model.named_modules())[layer_name]
    h = layer.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach().clone()))
    try:
        m = model.training
        model.eval()
        with torch.no_grad():
            model(x)
        model.train(m)
    finally:
        h.remove()
    return seen[0].reshape(x.shape[0], -1)


LINEAR = problems.cases(
    [("fc", "fc2"), ("fc", "fc1"), ("fc", "out"), ("cnn", "fc1"), ("nested", "body.fc2"),
     ("bn-dropout", "out"), ("wrapped", "net.fc2")], ["ce"], N, data_seed=9)


@pytest.mark.parametrize("case", LINEAR, ids=problems.ids(LINEAR))
def test_problem_block_and_linear_inputs(case, device):
    model, x, y = problems.build(case)
    target = case.target
    problem = make_problem(model, target, x, y, "ce", chunk_size=4, device=device)
    assert problem.device.type == device and problem.linear_inputs.device.type == device
    layer = dict(model.named_modules())[target]
    assert problem.linear_name == target
    assert problem.block_names == [f"{target}.weight"]
    assert problem.D == layer.weight.numel() and problem.N == N
    assert_rel_close(problem.w, layer.weight.detach().reshape(-1), 1e-15)  # a copy
    assert problem.linear_inputs.shape == (N, layer.in_features)
    assert_rel_close(problem.linear_inputs, _layer_inputs(model, target, x), 1e-14)


def test_problem_without_linear_target_has_no_linear_inputs(device):
    model, x, y = ref.make_model("cnn", N)
    for target in ("conv", ["conv.weight"], ["fc1.weight", "out.weight"]):
        problem = make_problem(model, target, x, y, "ce", device=device)
        assert problem.linear_name is None and problem.linear_inputs is None


def test_linear_weight_by_parameter_name_is_the_linear_target(device):
    """["fc1.weight"] (the reference's layer_index) is the same block as "fc1": the
    Kronecker operator and the AWD stage apply, and the numbers are the module's."""
    model, x, y = ref.make_model("cnn", N)
    by_name = make_problem(model, ["fc1.weight"], x, y, "ce", device=device)
    by_module = make_problem(model, "fc1", x, y, "ce", device=device)
    assert by_name.linear_name == "fc1"
    assert_rel_close(by_name.linear_inputs, by_module.linear_inputs, 1e-14)
    V = torch.randn(by_name.D, 3, dtype=torch.float64)
    assert_rel_close(KroneckerHessianOperator(by_name).matmat(V),
                     HessianOperator(by_module).matmat(V), 1e-10)


@pytest.mark.parametrize("case", CNN_CE + FC_MSE, ids=problems.ids(CNN_CE + FC_MSE))
@pytest.mark.parametrize("m", [1, 4, 9])  # short block, exactly max_vectors, 4 + 4 + 1
def test_hessian_keeps_no_graph_after_a_product(case, dense, device, m):
    """Reverse mode reuses a chunk's gradient graph for the chunk's vector blocks within a
    product, but none outlives the product: after matmat no reference to any chunk's
    graph (its w and gradient g) is alive, the last chunk's included."""
    problem = _problem(dense, device, chunk_size=5)  # 5 chunks, the last short
    op = HessianOperator(problem, max_vectors=4)
    graphs = []
    chunk_matmat = op._chunk_matmat

    def spy(chunk, x, y, V):
        out = chunk_matmat(chunk, x, y, V)
        graphs.append(tuple(weakref.ref(t) for t in op._graph[1:]))  # (w, g) in use
        return out

    op._chunk_matmat = spy
    V = torch.from_numpy(np.random.default_rng(7).standard_normal((dense.D, m)))
    problems.compare_matmat(op, dense.H, V, RTOL64)
    assert len(graphs) == problem.n_chunks * -(-m // 4)
    gc.collect()
    assert op._graph is None
    assert all(r() is None for pair in graphs for r in pair), "a chunk's graph outlived it"
    problems.compare_matmat(op, dense.H, V, RTOL64)  # the next product rebuilds them
    assert op._graph is None and op.n_passes == 2


def test_hessian_docstring_example_runs():
    """The executable example of HessianOperator's docstring (a tiny network's H v against
    the dense torch.func.hessian) passes under doctest."""
    import awch_scale.model.operators.hessian as module

    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted >= 10 and result.failed == 0, result
