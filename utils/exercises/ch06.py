"""Exercises of notebook 06 (quantization)."""

from utils.exercises import Exercise


def _test_round_to_e4m3(fn):
    import torch

    g = torch.Generator().manual_seed(0)
    # normal range, subnormal range (below 2**-6), beyond the largest value (448), zero and signs
    x = torch.cat([torch.randn(300, generator=g) * 20, torch.rand(100, generator=g) * 2 ** -6,
                   -torch.rand(50, generator=g) * 2 ** -7, torch.tensor([0.0, 1.0, -1.0, 448.0, 500.0, -1000.0,
                                                                        2 ** -9, 2 ** -10 * 1.01, 3.2e-3])])
    got = fn(x.clone())
    assert isinstance(got, torch.Tensor) and got.shape == x.shape, "return a float tensor shaped like x"
    want = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    bad = (got.float() != want).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        kind = "a subnormal (|x| < 2**-6)" if abs(x[i]) < 2 ** -6 else ("beyond 448" if abs(x[i]) > 448 else "normal")
        raise AssertionError(f"x = {x[i].item():.6g} ({kind}) rounds to {want[i].item():.6g} in e4m3, you gave "
                             f"{got[i].item():.6g} ({len(bad)} of {len(x)} values wrong)")


round_to_e4m3 = Exercise(
    title="round to fp8 e4m3 by hand",
    test=_test_round_to_e4m3,
    hint="e4m3 has 3 fraction bits: between 2**e and 2**(e+1) the spacing is 2**(e-3). The exponent never goes "
         "below -6: values smaller than 2**-6 share the fixed spacing 2**-9 (subnormals). Clamp to ±448 first.",
    hint2="e = floor(log2(|x|)) clamped to at least -6; step = 2.0 ** (e - 3); "
          "return sign * round(|x| / step) * step after clamping |x| to 448 (torch.round rounds half to even, "
          "like the hardware). Take care of x = 0 (log2 of 0).",
    solution_code='''
import torch

def round_to_e4m3(x):
    a = x.abs().clamp(max=448.0)
    e = torch.floor(torch.log2(a.clamp(min=2.0 ** -20))).clamp(min=-6)   # subnormals share exponent -6
    step = 2.0 ** (e - 3)                                                  # 3 fraction bits
    return torch.sign(x) * torch.round(a / step) * step
''',
    wrong_code='''
import torch

def round_to_e4m3(x):
    a = x.abs().clamp(max=448.0)
    e = torch.floor(torch.log2(a.clamp(min=2.0 ** -20)))   # forgot that the exponent stops at -6
    step = 2.0 ** (e - 3)
    return torch.sign(x) * torch.round(a / step) * step
''',
    answer_name="round_to_e4m3",
)


def _test_smooth_scales(fn):
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=g)
    x[:, 5] *= 40.0  # an outlier feature
    w = torch.randn(16, 32, generator=g) * 0.1
    x_s, w_s = fn(x.clone(), w.clone(), 0.5)
    assert x_s.shape == x.shape and w_s.shape == w.shape, "return (x / s, w * s) with the shapes of x and w"
    torch.testing.assert_close(x_s @ w_s.t(), x @ w.t(), rtol=1e-4, atol=1e-4,
                               msg="the product must not change: divide the activations' columns by s and "
                                   "multiply the weights' columns (input features) by the same s")
    ax, aw = x.abs().amax(0), w.abs().amax(0)
    s = ax.sqrt() / aw.sqrt()
    torch.testing.assert_close(x_s, x / s, rtol=1e-4, atol=1e-6,
                               msg="with alpha = 0.5, s_j = sqrt(max|x_j|) / sqrt(max|w_j|) for each input feature j")
    # and it helps per-token int8: the outlier column no longer sets every token's scale
    def q8(t):
        sc = t.abs().amax(1, keepdim=True) / 127
        return torch.round(t / sc) * sc
    err_plain = (q8(x) @ w.t() - x @ w.t()).abs().mean()
    err_smooth = (q8(x_s) @ w_s.t() - x @ w.t()).abs().mean()
    assert err_smooth < err_plain, "smoothing should lower the int8 error of x @ w.T"


smooth_scales = Exercise(
    title="SmoothQuant: move the outliers from activations into weights",
    test=_test_smooth_scales,
    hint="x @ w.T is unchanged if column j of x is divided by s_j and column j of w (input feature j) multiplied "
         "by s_j. Choose s_j so both get the same range: s_j = max|x_j|^alpha / max|w_j|^(1 - alpha).",
    hint2="ax = x.abs().amax(0); aw = w.abs().amax(0) (per input feature, over tokens / over output rows); "
          "s = ax ** alpha / aw ** (1 - alpha); return x / s, w * s.",
    solution_code='''
def smooth_scales(x, w, alpha=0.5):
    """x (tokens, features), w (out, features) -> (x / s, w * s)."""
    ax = x.abs().amax(0)              # each input feature's range over the tokens
    aw = w.abs().amax(0)              # each input feature's range over the output rows
    s = ax ** alpha / aw ** (1 - alpha)
    return x / s, w * s
''',
    wrong_code='''
def smooth_scales(x, w, alpha=0.5):
    ax = x.abs().amax(0)
    aw = w.abs().amax(0)
    s = ax ** alpha / aw ** (1 - alpha)
    return x / s, w / s               # scaled the weights the wrong way: the product changes
''',
    answer_name="smooth_scales",
)


def _test_gptq_column_step(fn):
    import torch

    g = torch.Generator().manual_seed(2)
    n_in = 12
    x = torch.randn(200, n_in, generator=g) @ (torch.eye(n_in) + 0.5 * torch.randn(n_in, n_in, generator=g))
    H = 2 * x.t() @ x / len(x) + 0.01 * torch.eye(n_in)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    w = torch.randn(6, n_in, generator=g)
    scale = w.abs().amax(1) / 7  # per-row symmetric int4 scale
    out = fn(w.clone(), U, scale)
    assert isinstance(out, tuple) and len(out) == 2, "return (q0, w_new): the quantized first column and the updated weights"
    q0, w_new = out
    want_q0 = torch.round(w[:, 0] / scale).clamp(-7, 7) * scale
    torch.testing.assert_close(q0, want_q0, msg="q0 = round(w[:, 0] / scale) clamped to [-7, 7], times scale")
    err = (w[:, 0] - want_q0) / U[0, 0]
    want = w - err[:, None] * U[0][None, :]
    torch.testing.assert_close(w_new[:, 1:], want[:, 1:], rtol=1e-5, atol=1e-6,
                               msg="the other columns move by -err * U[0, j], with err = (w0 - q0) / U[0, 0]")
    # the point of the update: the layer output on x changes less than when rounding alone
    gptq = torch.cat([q0[:, None], w_new[:, 1:]], 1)
    rtn = torch.cat([want_q0[:, None], w[:, 1:]], 1)
    assert ((x @ (w - gptq).t()) ** 2).mean() < ((x @ (w - rtn).t()) ** 2).mean(), \
        "after the update, x @ w.T should be closer to the original than with the first column rounded alone"


gptq_column_step = Exercise(
    title="one GPTQ step: round a column, push its error onto the others",
    test=_test_gptq_column_step,
    hint="Round column 0 to the grid. Its error, divided by U[0, 0] (U = upper Cholesky factor of H^-1), is "
         "spread over the remaining columns in proportion to row 0 of U.",
    hint2="q0 = torch.round(w[:, 0] / scale).clamp(-7, 7) * scale; err = (w[:, 0] - q0) / U[0, 0]; "
          "w_new = w - err[:, None] * U[0][None, :]; return q0, w_new.",
    solution_code='''
import torch

def gptq_column_step(w, U, scale):
    """w (out, in); U: upper Cholesky factor of H^-1 (in, in); scale (out,) for int4 symmetric."""
    q0 = torch.round(w[:, 0] / scale).clamp(-7, 7) * scale
    err = (w[:, 0] - q0) / U[0, 0]
    w_new = w - err[:, None] * U[0][None, :]
    return q0, w_new
''',
    wrong_code='''
import torch

def gptq_column_step(w, U, scale):
    q0 = torch.round(w[:, 0] / scale).clamp(-7, 7) * scale
    err = w[:, 0] - q0                      # forgot to divide by U[0, 0]
    w_new = w - err[:, None] * U[0][None, :]
    return q0, w_new
''',
    answer_name="gptq_column_step",
)
