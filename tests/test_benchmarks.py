"""Every benchmark runs, at a tiny size, and prints the JSON docs/BENCHMARKS.md reads.

Each script is run as a user runs it (`python benchmarks/NAME.py ...`) with size flags
only, so a broken import or a renamed API fails here rather than on the next person's
run. The figures themselves mean nothing at these sizes; the keys and their kinds do.
(`benchmarks/readme.py` is the README parser that tests/test_readme.py uses.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, not an installed package
from benchmarks.toy_loop import COLLECTIONS, store_of  # noqa: E402

BENCHMARKS = REPO / "benchmarks"


def bench(name: str, *flags: str, tmp_path, timeout: int = 600) -> dict:
    """Run one benchmark in `tmp_path`, its temporary files in a short-named folder (a
    browser's socket path under a long pytest folder passes Linux's 107-byte limit once
    the run counter has three digits); the JSON it printed."""
    with tempfile.TemporaryDirectory(prefix="bench-") as short:
        env = dict(os.environ, TMPDIR=short, OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *flags],
                              capture_output=True, text=True, cwd=tmp_path, env=env,
                              timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_every_benchmark_script_is_run_here():
    tested = {"ai_feedback", "annotate_latency", "cache_build", "crowd", "encode_cost",
              "eval_auto",
              "import_shard", "judge_data", "objectives", "online_rl", "own_judge",
              "pair_generation",
              "peers", "pool_serving",
              "real_plan",
              "real_sizes", "relabel", "reward_http", "run_index", "store_votes", "threads",
              "toy_loop",
              "train_throughput"}
    assert {p.stem for p in BENCHMARKS.glob("*.py")} - {"readme", "__init__"} == tested


def test_ai_feedback(tmp_path):
    out = bench("ai_feedback", "--pairs", "4", "--steps", "2", "--batch", "2",
                "--threads", "1", "--margins", "0", "0.1", "--floor-batches", "1", "2",
                "--guidance-range", "3", "12", tmp_path=tmp_path)
    assert out["benchmark"] == "ai_feedback" and out["pairs"] == 4 and out["steps"] == 2
    assert out["guidance_range"] == [3.0, 12.0]
    assert set(out["floor_pairs_per_s"]) == {"1", "2"} and out["collect_over_floor"] > 0
    assert out["pairs_per_min"] > 0 and 0 <= out["pairs_both_pass"] <= 1
    assert [m["tie_margin"] for m in out["outcome_mix"]] == [0.0, 0.1]
    for mix in out["outcome_mix"]:
        assert abs(mix["left"] + mix["right"] + mix["tie"] - 1) < 0.01


def test_crowd_flags_the_always_left_annotator_and_no_honest_one(tmp_path):
    # twelve logins vote through gradio_client: nine by the toy judge, two at random, one
    # always "left". At 22 votes each, the random voters' flags rest on their median look
    # (0.6 s against the rule's 1 s), which a loaded machine stretches past 1 s; their
    # flags at full size are in docs/RESULTS.md. The two DPO runs after it are the toy
    # preset's own command (tests/test_train.py), left out here to keep the suite's time
    out = bench("crowd", "--out", str(tmp_path / "crowd"), "--votes", "22", "--steps", "4",
                "--honest-noise", "0", "--no-train", tmp_path=tmp_path)
    assert out["errors"] == [] and out["retries"] == []  # no answer lost, none resent
    assert "lefty" in out["flagged"]  # 22 of 22 on the left: binomial p < 0.001
    assert set(out["flagged"]) <= {"lefty", "random-1", "random-2"}  # no honest one
    assert isinstance(out["flagged_correctly"], bool)
    assert {a["votes"] for a in out["annotators"].values()} == {22}
    assert out["overlap_pairs"] > 0 and out["alpha"] is not None


def test_own_judge(tmp_path):
    # people who like large shapes vote, a judge learns them, then labels new pairs; the
    # DPO runs after it are the toy preset's own command (tests/test_train.py)
    out = bench("own_judge", "--out", str(tmp_path / "oj"), "--votes", "60", "--holdout",
                "16", "--feedback", "8", "--judge-steps", "4", "--no-train",
                tmp_path=tmp_path)
    assert out["people"]["votes"] == 60 and out["judge"]["trained_on"]["annotators"] == 6
    held = out["judge"]["heldout"]
    assert 0 < held["pairs"] <= 16 and held["accuracy"] is not None
    scorers = {s["scorer"]: s for s in out["agreement"]["scorers"]}
    judge = str(tmp_path / "oj" / "judge" / "final")
    assert set(scorers) == {"toy_judge", judge, "benchmarks.own_judge:size"}
    assert scorers[judge]["agreement"] == pytest.approx(held["accuracy"])
    assert out["feedback_s"] > 0


def test_judge_data(tmp_path):
    out = bench("judge_data", "--votes", "200", "400", tmp_path=tmp_path)
    assert [row["votes"] for row in out["rows"]] == [200, 400]
    for row in out["rows"]:
        assert row["split_s"] > 0 and row["split_held_mb"] > 0
        assert 0 < row["agreement_votes"] < row["votes"] // 4  # decisive held-out votes
        assert row["trained_pairs_bytes"] > 8 * (row["votes"] - row["votes"] // 4) * 0.9


def test_annotate_latency(tmp_path):
    out = bench("annotate_latency", "--annotators", "1", "--buffers", "0", "--votes", "2",
                "--think", "1", "--steps", "2", tmp_path=tmp_path)
    assert out["benchmark"] == "annotate_latency" and out["steps"] == 2
    (result,) = out["results"]
    assert result["annotators"] == 1 and result["buffer"] == 0 and result["votes"] == 2
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["max_ms"]
    assert result["pairs_made"] >= 3  # the first pair and one after each vote


def test_eval_auto(tmp_path):
    out = bench("eval_auto", "--seeds", "1", "--steps", "2", tmp_path=tmp_path)
    assert out["images"] == 18 and out["steps"] == 2
    assert out["generate_images_per_s"] > 0 and out["judge_images_per_s"] > 0
    assert out["reuse_s"] >= 0


def test_cache_build(tmp_path):
    out = bench("cache_build", "--rows", "350", tmp_path=tmp_path)
    assert out["benchmark"] == "cache_build" and [r["processes"] for r in out["runs"]] == [1, 2]
    assert all(run["pairs"] == 280 and run["pairs_per_s"] > 0 and run["same_cache"]
               for run in out["runs"])
    assert out["ratio_over_1"]["2"] > 0


def test_encode_cost(tmp_path):
    out = bench("encode_cost", "--pairs", "1000", "--captions", "100", tmp_path=tmp_path)
    assert [r["model"] for r in out["results"]] == ["sd15", "sdxl", "sd3", "flux"]
    for result in out["results"]:
        assert result["cache_gib"] > result["text_gib"] > 0
        assert result["gflop_per_pair"] > 0 and result["encode_eflop"] > 0
        hours = result["hours_per_gpu"]
        assert hours["H100 SXM x8"] == pytest.approx(2 * hours["H100 SXM x16"], rel=0.02)


def test_real_plan(tmp_path):
    out = bench("real_plan", "--pairs", "2000", "--processes", "8", "--runs", "flux-fsdp",
                tmp_path=tmp_path)
    assert out["pairs"] == 2000 and [r["run"] for r in out["results"]] == ["flux-fsdp"]
    [result] = out["results"]
    kinds = [line.split(":")[0] for line in result["lines"]]
    assert kinds == ["data", "cache", "encode", "ram", "memory"], result["lines"]
    assert "FSDP over 8 processes" in result["lines"][-1] and result["fsdp"]
    assert "(2,000 pairs)" in result["lines"][0] and result["refused"] is None
    assert result["memory_gib"] > 1  # a 12B transformer, even sharded over 8


def test_run_index(tmp_path):
    out = bench("run_index", "--pairs", "500", "1000", tmp_path=tmp_path)  # 2 processes
    assert [s["pairs"] for s in out["sizes"]] == [500, 1000]
    assert 0 < out["sizes"][-1]["grew_mb"] < 100


def test_relabel(tmp_path):
    out = bench("relabel", "--pairs", "20", "40", tmp_path=tmp_path)
    assert out["benchmark"] == "relabel"
    assert [r["pairs"] for r in out["results"]] == [20, 40]
    for result in out["results"]:
        assert result["pairs_per_s"] > 0 and result["peak_rss_mb"] > 0
        assert result["over_floor"] > 0 and result["floor_pairs_per_s"] > 0
        assert result["over_scorer"] > 0 and result["scorer_pairs_per_s"] > 0


def test_online_rl(tmp_path):
    out = bench("online_rl", "--tiny", tmp_path=tmp_path)
    assert out["benchmark"] == "online_rl" and out["steps"] == 1
    assert out["rollouts_per_step"] == 4 and len(out["reward_after"]) == 1
    assert all(0 <= r <= 1 for r in out["reward_before"] + out["reward_after"])
    assert out["kl_last"] == 0.0  # one step: the reference is still the policy


def test_reward_http(tmp_path):
    out = bench("reward_http", "--images", "16", "--sizes", "32", "--repeats", "1",
                tmp_path=tmp_path)
    assert out["benchmark"] == "reward_http"
    [result] = out["results"]
    assert result["same_scores"] is True and result["images"] == 16
    assert result["http_ms_per_image"] > 0 and result["request_kb"] > 0


def test_import_shard(tmp_path):
    out = bench("import_shard", "--rows", "10", "20", "--stored", "500", tmp_path=tmp_path)
    assert out["benchmark"] == "import_shard"
    assert [r["rows"] for r in out["results"]] == [10, 20]
    for result in out["results"]:
        assert result["rows_per_s"] > 0 and result["peak_rss_mb"] > 0 and result["shard_mb"] > 0
        assert result["floor_rows_per_s"] > 0 and result["import_over_floor"] > 0
        assert result["added_at_stored"] == result["rows"] and result["at_stored_over_empty"] > 0


def test_peers_skips_without_the_peers_scripts(tmp_path):
    # the peers' training scripts are not in this repository (benchmarks/peers.py says how
    # to fetch them): without them the benchmark says why in one line and succeeds
    out = bench("peers", tmp_path=tmp_path)
    assert out == {"benchmark": "peers", "skipped": "no --peers folder given: the peers' "
                   "scripts are not in this repository"}
    out = bench("peers", "--peers", str(tmp_path), tmp_path=tmp_path)
    assert out["skipped"].startswith(f"{tmp_path} lacks train.py, train_diffusion_dpo.py")


def test_peers_real_size_path_runs_ours_on_a_built_pipeline(tmp_path):
    # --size sd15's path (a pipeline real_sizes.py builds, noise pairs at its resolution,
    # one pair a step, checkpointing on) at the tiny size; ours needs no peer script
    out = bench("peers", "--size", "tiny", "--only", "ours_lora", "--rounds", "1",
                "--steps", "3", "--warmup", "1", "--threads", "1", tmp_path=tmp_path)
    assert (out["size"], out["resolution"], out["batch_pairs"]) == ("tiny", 64, 1)
    assert out["gradient_checkpointing"] is True and list(out["trainers"]) == ["ours_lora"]
    assert out["trainers"]["ours_lora"]["pairs_per_s"]["median"] > 0
    refused = subprocess.run([sys.executable, str(BENCHMARKS / "peers.py"), "--size", "sd15",
                              "--only", "ours_full", "floor_full"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("error: the floors run at --size toy only: leave "
                                      "floor_full and floor_lora out of --only")

def test_pool_serving(tmp_path):
    out = bench("pool_serving", "--annotators", "2", "--votes", "2", "--think", "0.1",
                "--steps", "2", "--client-processes", "1", tmp_path=tmp_path)
    assert out["benchmark"] == "pool_serving"
    pool, live = out["results"]
    assert (pool["case"], live["case"]) == ("pool", "live")
    for case in (pool, live):
        assert case["every_acknowledged_vote_stored_once"] and case["errors"] == []
        assert case["p95_ms"] >= case["p50_ms"] > 0 and case["server_cores"] >= 0
    assert pool["votes_acknowledged"] == 4 and pool["busy"] == 0


def test_pair_generation(tmp_path):
    out = bench("pair_generation", "--steps", "2", "--repeats", "1", tmp_path=tmp_path)
    assert out["benchmark"] == "pair_generation" and out["model"] == "toy"
    assert out["batched_s_per_pair"] > 0 and out["separate_s_per_pair"] > 0
    assert out["speedup"] > 0 and out["import_s"] > 0 and out["load_s"] > 0


def test_store_votes(tmp_path):
    out = bench("store_votes", "--votes", "16", tmp_path=tmp_path)
    assert out["benchmark"] == "store_votes" and out["jpeg_kb"] > 0
    cases = {(r["threads"], r["with_images"], r.get("batch")): r for r in out["results"]}
    assert set(cases) == {(1, False, None), (8, False, None), (1, True, None),
                          (8, True, None), (1, True, 16)}
    for result in cases.values():
        assert result["votes"] == 16 and result["votes_per_s"] > 0
        assert 0 < result["p50_ms"] <= result["p99_ms"]


def test_train_throughput(tmp_path):
    out = bench("train_throughput", "--pairs", "8", "--batch", "2", "--steps", "1",
                "--rounds", "1", tmp_path=tmp_path)
    assert out["batch_pairs"] == 2 and out["rounds"] == 1
    assert set(out["pairs_per_s"]) == {"trainer_full", "floor_full", "uncached_full",
                                       "trainer_lora", "floor_lora", "mapo_full", "mapo_lora"}
    assert all(v > 0 for v in out["pairs_per_s"].values())
    assert set(out["peak_rss_mb"]) == {"full", "lora", "mapo"}
    assert set(out["mapo_over_dpo"]) == {"full", "lora", "peak_rss_full"}
    held = out["unet_parameters_held"]
    assert held["full"] == 2 * held["one_unet"] and held["lora"] > held["one_unet"]
    assert held["mapo_full"] == held["one_unet"]  # MaPO holds no reference copy
    assert 0 < out["trainable_parameters"]["lora"] < out["trainable_parameters"]["full"]


def test_objectives_and_the_toy_loop(tmp_path):
    # --collect runs the toy loop (benchmarks/toy_loop.py --tiny) for the pairs, so that
    # loop's result is checked here too; then the sweep of one variant, its settings side
    # by side in their own folders
    runs = tmp_path / "objectives"
    out = bench("objectives", "--tiny", "--threads", "1", "--collect", "--sweep", "--jobs", "2",
                "--runs", str(runs), "--only", "dpo", tmp_path=tmp_path)
    loop = json.loads((runs / "collect" / "result.json").read_text())
    assert loop["train"]["steps"] == 2 and loop["pairs"]["pairs"] == 48
    # the README's loop judges the step its sample grid scored best (--keep_best true)
    assert loop["model"].endswith("collect/runs/train/toy/best")
    assert loop["train"]["best_step"] in (0, 2) and loop["train"]["best_score"] > 0
    assert loop["eval_auto"]["pairs"] == 18  # 18 captions x 1 seed
    judged = loop["eval_auto"]
    assert judged["wins"] + judged["losses"] + judged["ties"] == judged["pairs"]
    assert set(loop["criteria"]) >= {"judged_pairs_at_least_400", "adherence_up_15_points"}
    assert isinstance(loop["passed"], bool) and loop["pairs"]["images_on_eval_seeds"] == 0

    assert out["data"] == str(runs / "collect" / "runs" / "prefs.duckdb")
    assert [r["flags"] for r in out["rows"]] == [[], ["--beta", "2500"]]
    assert {r["objective"] for r in out["rows"]} == {"dpo"}
    for r in out["rows"]:
        assert 0 <= r["adherence_aligned"] <= 1 and r["peak_rss_mb"] > 0
        assert sum(r["judged"]) == 18
    assert out["best"]["dpo"] in [r["flags"] for r in out["rows"]]

    def config(setting: str) -> str:
        return (runs / "dpo" / setting / "runs" / "train" / "toy" / "config.yaml").read_text()

    assert "\nbeta: 2500.0\n" in config("beta_2500") and "\nbeta: 5000.0\n" in config("preset")


def test_the_flow_toy_loop_on_two_collections(tmp_path):
    # the README's flow-matching loop (the commands that name toy-flow), at the tiny size,
    # on README.md's collection and on the same store plus 8 pairs
    runs = tmp_path / "flow-loops"
    spread = bench("toy_loop", "--loop", "toy-flow", "--tiny", "--threads", "1", "--runs",
                   str(runs), "--collections", "2", "--tie-margin", "0.3", tmp_path=tmp_path)
    first = json.loads((runs / "readme" / "result.json").read_text())
    assert first["loop"] == "toy-flow" and first["model"].endswith("runs/train/toy-flow/final")
    assert first["pairs"]["pairs"] == 48 and first["train"]["steps"] == 2
    assert "--model toy-flow" in first["commands"]["collect"]
    assert first["commands"]["collect"].endswith("--tie-margin 0.3 --threads 1")  # last wins
    assert (runs / "readme" / "runs" / "toy-flow.duckdb").exists()
    assert not (runs / "readme" / "runs" / "prefs.duckdb").exists()  # the UNet toy's store
    assert first["eval_auto"]["pairs"] == 18 and isinstance(first["passed"], bool)
    second = json.loads((runs / "plus-8-pairs" / "result.json").read_text())
    assert second["pairs"]["pairs"] == 48 + 8 and "collect" not in second["commands"]
    assert second["pairs"]["collect"] == {"reused": str(runs / "plus-8-pairs.duckdb")}
    assert [c["collection"] for c in spread["collections"]] == ["readme", "plus-8-pairs"]
    gains = [c["adherence_gain_points"] for c in spread["collections"]]
    assert spread["adherence_gain_points"]["worst"] == min(gains)
    assert spread["adherence_gain_points"]["median"] == sum(gains) / 2
    assert spread["passed"] == all(spread["worst_case"].values())
    assert spread["loop_minutes_worst"] == spread["collections"][0]["minutes"]  # collected
    # another recipe on an earlier run's store: nothing collected, no loop time to judge
    again = bench("toy_loop", "--loop", "toy-flow", "--tiny", "--threads", "1", "--runs",
                  str(tmp_path / "again"), "--stores", str(runs), "--train-args", "--beta",
                  "50", tmp_path=tmp_path)
    (only,) = again["collections"]
    assert only["commands"]["train"].endswith("--beta 50") and not only["collected"]
    reused = json.loads((tmp_path / "again" / "readme" / "result.json").read_text())["pairs"]
    assert reused["collect"] == {"reused": str(runs / "readme" / "runs" / "toy-flow.duckdb")}
    assert again["loop_minutes_worst"] is None and again["passed"] is False
    assert [store_of(c, runs, "toy-flow") for c in COLLECTIONS] == [
        runs / "readme/runs/toy-flow.duckdb", runs / "plus-8-pairs.duckdb",
        runs / "readme/runs/toy-flow.duckdb", runs / "feedback-seed-1/runs/toy-flow.duckdb",
        runs / "feedback-seed-2/runs/toy-flow.duckdb"]


def test_real_sizes(tmp_path):
    out = bench("real_sizes", "--tiny", "--step", "lora", "full", "--steps", "1",
                tmp_path=tmp_path)
    full, lora = out["models"]["tiny_full"], out["models"]["tiny_lora8"]
    assert full["trainable_parameters"] == full["unet_parameters"]
    assert 0 < lora["trainable_parameters"] < lora["unet_parameters"] // 10
    # a full backward computes weight and input gradients; LoRA's skips most weight ones
    assert 2.5 < full["policy_forward_backward"] / full["reference_forward"] < 3.5
    assert lora["policy_forward_backward"] < full["policy_forward_backward"]
    assert full["pairs_per_s_per_gpu_cached"]["A100"] > full["pairs_per_s_per_gpu_uncached"][
        "A100"] > 0
    for mode in ("lora", "full"):
        step = out["cpu_step"]["modes"][mode]
        assert step["seconds_per_step"] > 0 and step["peak_rss_mb"] > 0
        assert step["dry_run_memory"].startswith("memory: about ")
    assert set(out["transformers"]) == {"tiny_flux2", "tiny_qwen_image", "tiny_z_image"}
    for row in out["transformers"].values():
        full, lora = row["full"], row["lora"]
        assert full["trainable_parameters"] == full["transformer_parameters"]
        assert 0 < lora["trainable_parameters"] < lora["transformer_parameters"]
        # a backward is about two forwards (less where outputs feed nothing: Qwen-Image's
        # last block's text stream)
        assert 2.0 < full["policy_forward_backward"] / full["reference_forward"] < 3.5
        # the reference is the same transformer with its adapters off
        assert lora["reference_forward"] == full["reference_forward"]
        assert full["dry_run_processes"] == 8 and full["dry_run_activations_gib"] >= 0
        assert row["text_cache_mib_per_caption"] > 0


def test_threads(tmp_path):
    out = bench("threads", "--steps", "1", "--copies", "2", tmp_path=tmp_path)
    assert set(out["seconds_per_step"]) == {"alone", "copies", "alone_passive",
                                            "copies_passive", "copies_one_thread"}
    assert len(out["seconds_per_step"]["copies"]) == 2
    assert out["slowdown_over_alone"]["alone"] == 1.0
