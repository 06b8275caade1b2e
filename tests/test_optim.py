"""Each update rule, penalty and clip against a step worked out by hand on a tiny buffer.

The expected numbers are written from the formulas optim.py documents (Adam with bias
correction; AdamW's decoupled decay; RMSProp as char-rnn; Adagrad; Adadelta as Zeiler; SGD
with heavy-ball or Nesterov momentum in PyTorch's form),
one scalar at a time, so a change to any rule's arithmetic shows up here.
"""
import math

import numpy as np
import pytest

from charrnn.optim import DEFAULTS, OPTIMIZERS, RULES, STATE_NAMES, Optimizer, clip_, grad_norm, parse_clip

W0 = [0.5, -1.0, 0.0]
G1 = [0.2, -0.4, 0.1]
G2 = [-0.1, 0.3, 0.0]


def _run(name, grads, lr, dtype=np.float64, **kw):
    opt = Optimizer(name, 3, dtype, **kw)
    w = np.array(W0, dtype)
    for g in grads:
        opt.step(w, np.array(g, dtype), lr)
    return w, opt


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_adam_two_steps_with_bias_correction(dtype, tol):
    b1, b2, eps, lr = 0.8, 0.9, 1e-8, 0.01
    w, opt = _run("adam", [G1, G2], lr, dtype, beta1=b1, beta2=b2, eps=eps)
    for k in range(3):
        m = v = 0.0
        x = W0[k]
        for t, g in enumerate((G1[k], G2[k]), start=1):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x -= lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
        assert w[k] == pytest.approx(x, rel=tol, abs=tol)
        assert opt.state["m"][k] == pytest.approx(m, rel=tol, abs=tol)
    assert opt.t == 2


def test_adam_first_step_moves_each_weight_by_lr_times_sign():
    # with bias correction the first step is lr * g / (|g| + eps): about lr, whatever the gradient's size
    w, _ = _run("adam", [[1e-3, -50.0, 0.0]], 0.01)
    assert w == pytest.approx([0.5 - 0.01, -1.0 + 0.01, 0.0], abs=1e-7)


def test_rmsprop_step_as_char_rnn():
    alpha, eps, lr = 0.9, 1e-8, 0.1
    w, opt = _run("rmsprop", [G1, G2], lr, alpha=alpha, eps=eps)
    # weight 0 by hand: sq1 = 0.1 * 0.04 = 0.004, sq2 = 0.9 * 0.004 + 0.1 * 0.01 = 0.0046
    x0 = 0.5 - 0.1 * 0.2 / (math.sqrt(0.004) + eps)
    x0 -= 0.1 * -0.1 / (math.sqrt(0.0046) + eps)
    assert w[0] == pytest.approx(x0, rel=1e-12)
    assert opt.state["sq"][0] == pytest.approx(0.0046, rel=1e-12)
    assert w[2] == pytest.approx(0.0 - 0.1 * 0.1 / (math.sqrt(0.1 * 0.01) + eps), rel=1e-12)


def test_adagrad_accumulates_squares():
    eps, lr = 1e-10, 0.5
    w, opt = _run("adagrad", [G1, G2], lr, eps=eps)
    # weight 1: s1 = 0.16, s2 = 0.25
    x1 = -1.0 - 0.5 * -0.4 / (0.4 + eps) - 0.5 * 0.3 / (0.5 + eps)
    assert w[1] == pytest.approx(x1, rel=1e-12)
    assert opt.state["sum"] == pytest.approx([0.05, 0.25, 0.01], rel=1e-12)


def test_nesterov_as_pytorch():
    mu, lr = 0.9, 0.1
    w, opt = _run("nesterov", [G1, G2], lr, momentum=mu)
    # weight 0: v1 = 0.2, w1 = 0.5 - 0.1 (0.2 + 0.18) = 0.462; v2 = 0.18 - 0.1 = 0.08, w2 = w1 - 0.1 (-0.1 + 0.072)
    assert w[0] == pytest.approx(0.462 - 0.1 * (-0.1 + 0.9 * 0.08), rel=1e-12)
    assert opt.state["vel"][0] == pytest.approx(0.08, rel=1e-12)


def test_nesterov_without_momentum_is_plain_sgd():
    w, _ = _run("nesterov", [G1], 0.1, momentum=0.0)
    assert w == pytest.approx([0.5 - 0.02, -1.0 + 0.04, -0.01], rel=1e-12)


def test_weight_decay_adds_l2_gradient():
    # plain SGD so the penalty's effect is visible as it is: g + wd * w
    w, _ = _run("nesterov", [G1], 0.1, momentum=0.0, weight_decay=0.5)
    assert w == pytest.approx([0.5 - 0.1 * (0.2 + 0.25), -1.0 - 0.1 * (-0.4 - 0.5), -0.01], rel=1e-12)


def test_l1_adds_sign_of_weight_and_nothing_at_zero():
    w, _ = _run("nesterov", [G1], 0.1, momentum=0.0, l1=0.3)
    assert w == pytest.approx([0.5 - 0.1 * (0.2 + 0.3), -1.0 - 0.1 * (-0.4 - 0.3), -0.01], rel=1e-12)


def test_penalties_feed_the_adaptive_rules_too():
    # coupled L2 (the gradient of the penalty, before the rule), so Adam's first step is still lr * sign
    w, _ = _run("adam", [[0.0, 0.0, 0.0]], 0.01, weight_decay=1.0)
    assert w == pytest.approx([0.5 - 0.01, -1.0 + 0.01, 0.0], abs=1e-7)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_adamw_decays_the_weight_outside_the_moments(dtype, tol):
    b1, b2, eps, lr, wd = 0.8, 0.9, 1e-8, 0.01, 0.5
    w, opt = _run("adamw", [G1, G2], lr, dtype, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)
    for k in range(3):
        m = v = 0.0
        x = W0[k]
        for t, g in enumerate((G1[k], G2[k]), start=1):
            x *= 1 - lr * wd                     # the decay never reaches m or v
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x -= lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
        assert w[k] == pytest.approx(x, rel=tol, abs=tol)
        assert opt.state["m"][k] == pytest.approx(m, rel=tol, abs=tol)
        assert opt.state["v"][k] == pytest.approx(v, rel=tol, abs=tol)


def test_adamw_without_decay_is_adam_and_adam_decay_stays_coupled():
    a, _ = _run("adam", [G1, G2], 0.01)
    aw, _ = _run("adamw", [G1, G2], 0.01)
    assert np.array_equal(a, aw)
    coupled, _ = _run("adam", [G1, G2], 0.01, weight_decay=0.5)
    decoupled, _ = _run("adamw", [G1, G2], 0.01, weight_decay=0.5)
    assert not np.allclose(coupled, decoupled)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_adadelta_scales_by_the_ratio_of_step_and_gradient_rms(dtype, tol):
    rho, eps, lr = 0.7, 1e-3, 0.5
    w, opt = _run("adadelta", [G1, G2], lr, dtype, rho=rho, eps=eps)
    for k in range(3):
        sq = delta = 0.0
        x = W0[k]
        for g in (G1[k], G2[k]):
            sq = rho * sq + (1 - rho) * g * g
            d = math.sqrt(delta + eps) / math.sqrt(sq + eps) * g
            delta = rho * delta + (1 - rho) * d * d
            x -= lr * d
        assert w[k] == pytest.approx(x, rel=tol, abs=tol)
        assert opt.state["sq"][k] == pytest.approx(sq, rel=tol, abs=tol)
        assert opt.state["delta"][k] == pytest.approx(delta, rel=tol, abs=tol)


def test_sgd_default_is_plain_gradient_descent():
    w, opt = _run("sgd", [G1, G2], 0.1)
    assert opt.hyper == {"momentum": 0.0}
    want = [W0[k] - 0.1 * G1[k] - 0.1 * G2[k] for k in range(3)]
    assert w == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_sgd_momentum_is_heavy_ball():
    mu, lr = 0.9, 0.1
    w, opt = _run("sgd", [G1, G2, G1], lr, momentum=mu)
    for k in range(3):
        v, x = 0.0, W0[k]
        for g in (G1[k], G2[k], G1[k]):
            v = mu * v + g
            x -= lr * v
        assert w[k] == pytest.approx(x, rel=1e-12, abs=1e-15)
        assert opt.state["vel"][k] == pytest.approx(v, rel=1e-12, abs=1e-15)


def test_clip_norm_rescales_to_the_threshold_and_reports_the_old_norm():
    g = np.array([3.0, -4.0], np.float32)
    assert clip_(g, "norm", 2.5) == pytest.approx(5.0)
    assert g == pytest.approx([1.5, -2.0])
    assert grad_norm(g) == pytest.approx(2.5, rel=1e-6)


def test_clip_norm_leaves_a_small_gradient_alone():
    g = np.array([0.3, -0.4], np.float32)
    assert clip_(g, "norm", 1.0) == pytest.approx(0.5)
    assert g == pytest.approx([0.3, -0.4])


def test_clip_value_clamps_each_element():
    g = np.array([3.0, -4.0, 0.5], np.float32)
    assert clip_(g, "value", 1.0) == pytest.approx(math.sqrt(9 + 16 + 0.25), rel=1e-6)
    assert g == pytest.approx([1.0, -1.0, 0.5])


def test_clip_none_changes_nothing():
    g = np.array([30.0, -40.0], np.float32)
    assert clip_(g, "none", 0.0) == pytest.approx(50.0)
    assert g == pytest.approx([30.0, -40.0])


@pytest.mark.parametrize("spec,want", [("norm:5", ("norm", 5.0)), ("value:0.5", ("value", 0.5)),
                                       ("5", ("norm", 5.0)), ("none", ("none", 0.0)), (" Value:2 ", ("value", 2.0))])
def test_parse_clip_accepts_the_documented_forms(spec, want):
    assert parse_clip(spec) == want


@pytest.mark.parametrize("spec", ["norm", "norm:x", "max:5", "value:-1", "norm:0", "value:inf"])
def test_parse_clip_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        parse_clip(spec)


def test_unknown_optimizer_or_hyperparameter_is_refused():
    with pytest.raises(ValueError):
        Optimizer("lbfgs", 3)
    with pytest.raises(ValueError):
        Optimizer("adadelta", 3, beta1=0.9)
    with pytest.raises(ValueError):
        Optimizer("adam", 3, momentum=0.9)


def test_meta_round_trip_keeps_rule_hyperparameters_and_step():
    _, opt = _run("rmsprop", [G1], 0.1, alpha=0.7, eps=1e-6, weight_decay=0.01, l1=0.002)
    back = Optimizer.from_meta(opt.to_meta(), 3)
    assert (back.name, back.hyper, back.weight_decay, back.l1, back.t) == \
        ("rmsprop", {"alpha": 0.7, "eps": 1e-6}, 0.01, 0.002, 1)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("clip", [("norm", 0.3), ("value", 0.05)])
def test_updates_split_in_slices_equal_the_whole_buffer_update(name, clip):
    """CpuBackend's lanes hand clip_ and step slices of the buffer: the result must not depend
    on how it is cut (the norm sums fixed chunks in a fixed order)."""
    rng = np.random.default_rng(7)
    w0 = rng.normal(size=1001).astype(np.float32)
    g0 = rng.normal(size=1001).astype(np.float32)
    out = []
    for parts in (1, 3, 4):
        opt = Optimizer(name, w0.size, np.float32, weight_decay=1e-2, l1=1e-3)
        w, jobs_seen = w0.copy(), []

        def run(jobs):
            jobs_seen.append(len(jobs))
            for job in reversed(jobs):           # any order
                job()
        norms = []
        for _ in range(2):
            g = g0.copy()
            norms.append(clip_(g, *clip, run=run, parts=parts))
            opt.step(w, g, 0.01, run=run, parts=parts)
        assert set(jobs_seen) == {parts}
        out.append((norms, w))
    for norms, w in out[1:]:
        assert norms == out[0][0] and np.array_equal(w, out[0][1])


# ---------------------------------------------------------------- the learning-rate schedule
def test_schedule_cosine_anneals_from_base_to_floor_over_steps_or_time_whichever_is_further():
    from charrnn.optim import Schedule
    s = Schedule(0.01, floor=0.1, horizon=100, budget=60.0)
    assert s.rate(0, 0.0) == pytest.approx(0.01)
    assert s.rate(50, 0.0) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))          # half-way: the cosine's middle
    assert s.rate(10, 30.0) == pytest.approx(0.01 * 0.55)                      # time is further along
    assert s.rate(100, 0.0) == s.rate(500, 0.0) == pytest.approx(0.001)       # the floor, and no further
    assert s.base == 0.01                                                       # rate() changes nothing


def test_schedule_without_horizon_or_budget_and_constant_schedule_keep_the_base_rate():
    from charrnn.optim import Schedule
    assert Schedule(0.02).rate(10 ** 6, 1e6) == 0.02
    assert Schedule(0.02, kind="constant", horizon=10).rate(9, 0.0) == 0.02


def test_schedule_decays_per_epoch_from_decay_after_and_on_plateaus_only():
    from charrnn.optim import Schedule
    s = Schedule(1.0, kind="constant", decay=0.5, decay_after=2, plateau=0.1)
    s.on_epoch(1)
    assert s.base == 1.0
    s.on_epoch(2)
    s.on_epoch(3)
    assert s.base == 0.25
    s.on_validation(improved=True)
    assert s.base == 0.25
    s.on_validation(improved=False)
    assert s.base == pytest.approx(0.025)
    assert s.rate(0, 0.0) == pytest.approx(0.025)


def test_the_rule_table_names_each_rules_state_hyperparameters_and_kernels_on_both_devices():
    """optim.RULES is the one table: every rule's hyperparameters are its defaults', its state is
    what an Optimizer holds and a checkpoint may carry, and its GPU kernel exists."""
    from charrnn.backends import cuda_optim
    assert OPTIMIZERS == tuple(RULES)
    for name, rule in RULES.items():
        assert rule.hyper == tuple(DEFAULTS[name]), name
        assert tuple(Optimizer(name, 3).state) == rule.state == STATE_NAMES[name]
        assert callable(rule.cpu) and hasattr(cuda_optim, rule.cuda), name


def test_rule_scalars_are_the_rate_the_hyperparameters_then_step_or_corrections_then_decay():
    opt = Optimizer("adamw", 3, weight_decay=0.01, beta1=0.8, beta2=0.9, eps=1e-7)
    opt.t = 2
    rule = RULES["adamw"]
    assert rule.scalars(opt, 0.5, corrections=False) == (0.5, 0.8, 0.9, 1e-7, 2, 0.01)
    assert rule.scalars(opt, 0.5, corrections=True) == (0.5, 0.8, 0.9, 1e-7, 1 - 0.8 ** 2, 1 - 0.9 ** 2, 0.01)
    assert RULES["rmsprop"].scalars(Optimizer("rmsprop", 3), 0.1, corrections=True) == (0.1, 0.95, 1e-8)


def test_a_schedule_made_bare_anneals_as_a_run_with_the_default_options_does():
    from charrnn.optim import Schedule
    from charrnn.options import TrainOptions
    bare, run = Schedule(0.01, horizon=100), Schedule.of(TrainOptions(lr=0.01))
    run.horizon = 100
    assert bare == run
    assert bare.rate(100, 0.0) == pytest.approx(0.01 * TrainOptions().lr_floor)
