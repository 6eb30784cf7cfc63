"""The benchmark runs end to end on tiny settings and writes every documented key (no timing is asserted)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch

from helpers import POSTERIOR_NAMES as POSTERIORS, REPO, subprocess_env

pytestmark = pytest.mark.slow  # every test here runs train.py or a script in a subprocess


def test_bench_quick_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--device", "cpu",
                           "--out", str(out)], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu")
    for name in POSTERIORS:
        for key in ("images_per_s", "epoch_s", "ratio_vs_diag"):
            assert result["train"][name][key] > 0, (name, key)
        assert result["iw_eval"][name]["images_per_s"] > 0
        # a posterior's own matrix products lower the limit: never raise it
        iw = result["iw_eval"][name]
        assert iw["images_per_s_limit_with_posterior"] <= iw["images_per_s_limit"]
    for name in ("iaf", "sylvester"):  # flows run matrix products on every sample
        iw = result["iw_eval"][name]
        assert iw["fraction_of_limit_with_posterior"] > iw["fraction_of_limit"]
    assert result["iw_eval"]["diag"]["fraction_of_limit_with_posterior"] == result["iw_eval"]["diag"][
        "fraction_of_limit"]
    assert result["train"]["diag"]["ratio_vs_diag"] == 1.0 == result["train"]["diag"]["flops_ratio_vs_diag"]
    # planar's head gives each image 650 numbers from a 512-wide layer: more matrix products than diag's 64, and
    # rho's 34 fewer
    assert 1.1 < result["train"]["planar"]["flops_ratio_vs_diag"] < 1.3
    assert result["train"]["rho"]["flops_ratio_vs_diag"] < 1.0
    for key in ("matmul_gflops", "epoch_limit_s", "diag_epoch_over_limit"):
        assert result["limit"][key] > 0
    for key in ("project_epoch_s", "dataloader_epoch_s", "speedup"):
        assert result["data_path"][key] > 0
    assert set(result["rho_sampler"]) == {"4", "8"}
    assert all(v["speedup"] > 0 for v in result["rho_sampler"].values())
    assert result["information"]["speedup"] > 0 and result["information"]["outer"] == 10
    ais = result["ais"]
    assert ais["images"] == 4 and ais["chains"] == 2 and ais["evaluation_gflop"] > 0
    assert ais["fraction_of_limit"] == pytest.approx(ais["evaluations_per_s"] / ais["evaluations_per_s_limit"])
    assert ais["s_per_image_at_1000_steps"] > 0 and "AIS (diag, 4 images x 2 chains" in proc.stdout
    flush = result["flush_denormal"]
    assert flush["warmup_steps"] == 5 and 0 <= flush["subnormal_first_moments"] <= flush["parameters"]
    assert flush["speedup"] == pytest.approx(flush["kept_step_ms"] / flush["flushed_step_ms"])
    assert "subnormals: after 5 steps" in proc.stdout
    # the allocator row: two fresh processes, each under one malloc policy (glibc only)
    allocator = result["allocator"]
    if platform.libc_ver()[0] == "glibc":
        assert allocator["speedup"] == pytest.approx(allocator["retained_images_per_s"]
                                                     / allocator["default_images_per_s"])
        assert "allocator: diag IW NLL" in proc.stdout
    else:
        assert allocator == {}
    assert "diag epoch =" in proc.stdout and "rho sampler speedup" in proc.stdout and "I(x; z) of 40" in proc.stdout
    assert "compiled_step_ms" not in result["train"]["diag"] and result["likelihood"]["eval_speedup"] > 0
    assert set(result["iwae_step"]) == {"k1", "k5"} and "compiled_speedup" not in result["iwae_step"]["k1"]
    threads = result["threads"]
    assert threads["threads"] == 1 or (threads["speedup"] > 0 and threads["efficiency"] == pytest.approx(
        threads["speedup"] / threads["threads"]) and "threads: a diag step takes" in proc.stdout)
    # the bfloat16 step where it is native, and nowhere else
    native = torch.cpu._is_avx512_bf16_supported()
    for name in POSTERIORS:
        assert ("bfloat16_speedup" in result["train"][name]) == native, name
    assert ("diag_bfloat16_epoch_over_limit" in result["limit"]) == native
    if native:
        assert result["train"]["diag"]["bfloat16_ratio_vs_diag"] == 1.0 and result["iwae_step"]["k1"][
            "bfloat16_speedup"] > 0 and "bfloat16 ms" in proc.stdout and "with the networks in bfloat16" in proc.stdout


def test_bench_compiled_step_and_likelihood_rows(tmp_path):
    """--compile times the compiled step beside the eager one; --posteriors keeps diag, the ratios' reference."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--device", "cpu",
                           "--compile", "--posteriors", "planar", "--out", str(out)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["train"]) == ["diag", "planar"] and list(result["iw_eval"]) == ["diag", "planar"]
    for name in ("diag", "planar"):
        for key in ("compiled_step_ms", "compiled_speedup", "compiled_ratio_vs_diag"):
            assert result["train"][name][key] > 0, (name, key)
    assert result["train"]["diag"]["compiled_ratio_vs_diag"] == 1.0
    for key in ("eval_in_place_ms", "eval_out_of_place_ms", "eval_speedup", "train_mul_sum_us", "train_einsum_us",
                "train_speedup"):
        assert result["likelihood"][key] > 0, key
    for k in ("k1", "k5"):
        assert result["iwae_step"][k]["compiled_speedup"] > 0 and result["iwae_step"][k]["eager_step_ms"] > 0
    assert "compiled ms" in proc.stdout and "Bernoulli log-likelihood" in proc.stdout
    assert "IWAE paper's model" in proc.stdout


def test_bench_refuses_an_unknown_posterior_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--posteriors", "planr",
                           "--out", str(tmp_path / "b.json")], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'planr'" in proc.stderr and not (tmp_path / "b.json").exists()
