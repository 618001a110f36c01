"""benchmarks/fused_parity.py's bf16 agreement on synthetic logits: the margin test, the tied
top scores of a flat softmax rounded to bf16, and the exact power-of-2 spread of the head."""

import numpy as np

from benchmarks.fused_parity import bf16_agreement, logit_agreement, softmax_agreement


def test_bf16_agreement_counts_decided_frames_and_flips():
    a = np.array([[0.0, 1.0, 0.5], [0.30, 0.31, 0.0], [2.0, 0.0, 1.0]], np.float32)
    b = a.copy()
    b[1] = [0.32, 0.31, 0.0]  # frame 1 flips: its margin (0.01) is below twice the error (0.02)
    r = bf16_agreement(a, b, spread_std=2.0)
    assert r["valid_frames"] == 3
    assert abs(r["logits"]["max_abs_diff"] - 0.02) < 1e-6
    assert r["logits"]["top1_agreement"] == 2 / 3
    assert r["logits"]["frames_margin_gt_2x_max_diff"] == 2 and r["logits"]["top1_agreement_on_the_rest"] == 0.0
    assert abs(r["logits"]["fp32_top2_margin_quantiles"]["min"] - 0.01) < 1e-6
    assert r["logits"]["fp32_distinct_top1"] == 2  # classes 1, 1, 0
    c = r["logits_centered"]  # the fp32 mean over frames subtracted from both: the same difference
    assert abs(c["max_abs_diff"] - 0.02) < 1e-6 and c["top1_agreement"] <= 1.0
    s = r["softmax_spread"]["scale"]
    assert s == 2.0 ** round(np.log2(2.0 / r["logits"]["fp32_std_median"]))


def test_flat_softmax_ties_in_bf16_but_logits_agree():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 0.05, (200, 400)).astype(np.float32)  # random-init spread
    r = softmax_agreement(logits, logits)  # the same logits: only the bf16 softmax output differs
    # the top two scores ~1/400 apart by about one bf16 step (2^-16): a fifth of the frames tie
    assert r["bf16_tied_top_fraction"] > 0.1 and r["top1_agreement"] < 0.95
    spread = softmax_agreement(logits * 32, logits * 32)  # std 1.6: only the closest top-2 pairs tie
    assert spread["bf16_tied_top_fraction"] < 0.05 and spread["top1_agreement"] > 0.95


def test_centered_logits_expose_a_small_frame_dependent_part():
    rng = np.random.default_rng(1)
    common = rng.normal(0, 1.0, (1, 50))  # the same at every frame: one class wins everywhere
    a = (common + rng.normal(0, 1e-3, (100, 50))).astype(np.float32)
    b = a + rng.normal(0, 1e-3, a.shape).astype(np.float32)  # bf16-like error as large as the frame part
    raw = logit_agreement(a, b)
    assert raw["top1_agreement"] == 1.0 and raw["fp32_distinct_top1"] == 1
    cen = bf16_agreement(a, b)["logits_centered"]
    assert cen["fp32_distinct_top1"] > 10 and cen["top1_agreement"] < 0.9
