"""The benchmark harness's pure logic: statistics, the median of repeated runs, ratios, goals,
JSON, RESULTS.md sections and the plan (GPU mode included, without a GPU). No timings."""

from __future__ import annotations

import json
import math

import pytest

from bench.harness import Options, make_plan
from bench.stats import (
    ENVOY,
    IN_PROCESS,
    LITSERVE,
    SERVED,
    TTFT_PROBE,
    Cell,
    Run,
    Sample,
    cells_table,
    evaluate_goals,
    goals_table,
    machine_slug,
    median,
    percentile,
    ratio_rows,
    ratios_table,
    replace_section,
    results_from_json,
    results_to_json,
    run_figures,
    summarize,
)


def run(rate: float, latencies_ms: list[float], **sample: object) -> Run:
    """A run that did `rate` units in one second, with one sample per latency."""
    samples = [Sample(ms / 1000, **sample) for ms in latencies_ms]  # type: ignore[arg-type]
    return Run(wall_s=1.0, units=rate, samples=samples)


def cell(capability: str, path: str, clients: int, rate: float, variant: str = "", **kw) -> Cell:
    return Cell(capability, path, clients, "unit", variant, [run(rate, [10.0], **kw)]).finish()


def test_percentile_interpolates_and_handles_edges() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_median_ignores_non_finite_values() -> None:
    assert median([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(median([float("nan")]))


def test_run_figures() -> None:
    samples = [
        Sample(0.010, queue_s=0.001, batch=2, extra={"ttft_ms": 4.0}),
        Sample(0.030, queue_s=0.003, batch=4, extra={"ttft_ms": 8.0}),
    ]
    figures = run_figures(Run(2.0, 10, samples))
    assert figures["throughput"] == 5.0
    assert figures["p50_ms"] == pytest.approx(20.0)
    assert figures["p99_ms"] == pytest.approx(29.8)
    assert figures["queue_p50_ms"] == pytest.approx(2.0)
    assert figures["batch_mean"] == 3.0
    assert figures["batch_max"] == 4.0
    assert figures["ttft_ms"] == 6.0
    bare = run_figures(Run(1.0, 1, [Sample(0.01)]))
    assert math.isnan(bare["queue_p50_ms"])
    assert math.isnan(bare["batch_mean"])


def test_summary_is_the_median_of_per_run_figures() -> None:
    runs = [run(10, [1.0, 100.0]), run(30, [2.0, 2.0]), run(20, [3.0, 5.0])]
    summary = summarize(runs)
    assert summary["throughput"] == 20.0  # not the pooled 60 units / 3 s
    assert summary["p50_ms"] == pytest.approx(4.0)  # per-run p50s 50.5, 2, 4
    assert summary["runs"] == 3
    assert summary["spread"] == pytest.approx((30 - 10) / 20)


def test_ratio_rows_compare_with_in_process_litserve_and_direct() -> None:
    cells = [
        cell("vision", IN_PROCESS, 16, 10.0),
        cell("vision", SERVED, 16, 12.0),
        Cell("vision", ENVOY, 16, "img", "", [run(8.0, [12.5])]).finish(),
        cell("vision", LITSERVE, 16, 6.0),
        cell("edge", SERVED, 1, 100.0, "GetModelInfo"),
        Cell("edge", ENVOY, 1, "call", "GetModelInfo", [run(90.0, [10.4])]).finish(),
        cell("clients", SERVED, 1, 5.0, "raw stub"),  # nothing to compare with: no row
    ]
    rows = {(r.capability, r.path): r for r in ratio_rows(cells)}
    assert set(rows) == {
        ("vision", SERVED),
        ("vision", ENVOY),
        ("vision", LITSERVE),
        ("edge", ENVOY),
    }
    served = rows["vision", SERVED]
    assert served.time_ratio == pytest.approx(10 / 12)
    assert served.throughput_ratio == pytest.approx(1.2)
    assert served.vs_litserve == pytest.approx(2.0)
    assert math.isnan(served.envoy_added_p50_ms)
    assert rows["vision", ENVOY].envoy_added_p50_ms == pytest.approx(2.5)
    assert math.isnan(rows["vision", LITSERVE].vs_litserve)
    assert rows["edge", ENVOY].envoy_added_p50_ms == pytest.approx(0.4)
    assert math.isnan(rows["edge", ENVOY].time_ratio)
    table = ratios_table(ratio_rows(cells))
    assert "| vision | - | served | 16 | 0.833 | 1.200 | 2.000 | - |" in table


def test_sequential_capabilities_fall_back_to_the_one_client_baseline() -> None:
    cells = [
        cell("t2i", IN_PROCESS, 1, 0.2),
        cell("t2i", SERVED, 2, 0.25, "unary"),
        cell("vision", IN_PROCESS, 1, 10.0),
        cell("vision", SERVED, 4, 12.0),  # vision batches in-process: no stand-in baseline
    ]
    rows = {(r.capability, r.concurrency): r for r in ratio_rows(cells)}
    assert rows["t2i", 2].throughput_ratio == pytest.approx(1.25)
    assert ("vision", 4) not in rows


def test_goals() -> None:
    cells = [
        cell("t2i", IN_PROCESS, 1, 1.0),
        cell("t2i", SERVED, 1, 0.98, "unary"),
        cell("vision", IN_PROCESS, 16, 10.0),
        cell("vision", SERVED, 16, 9.0),
        cell("vl", IN_PROCESS, 1, 5.0, extra={"decode_tps": 10.0}),
        cell("vl", SERVED, 1, 5.0, "StreamChat", extra={"decode_tps": 9.6}),
    ]
    by_name = {g.name: g for g in evaluate_goals(cells)}
    t2i = by_name["t2i: served / in-process time per job (1 client, unary)"]
    assert t2i.value == pytest.approx(1 / 0.98)
    assert t2i.met is True
    batched = by_name["vision: served 16 clients / in-process batched (16)"]
    assert batched.value == pytest.approx(0.9)
    assert batched.met is False
    assert by_name["vision: served 16 clients / LitServe 16 clients"].met is None
    assert by_name["vl: served / in-process decode tokens/s (1 client)"].met is True
    edge = [g for g in by_name.values() if g.name.startswith("edge")]
    assert edge[0].met is None
    assert len(by_name) == 8
    assert "not measured" in goals_table(list(by_name.values()))
    # A quick run measured vision at 4 clients at most: the goal is evaluated there.
    quick = [cell("vision", IN_PROCESS, 4, 10.0), cell("vision", SERVED, 4, 11.0)]
    names = [g.name for g in evaluate_goals(quick) if g.met is not None]
    assert names == ["vision: served 4 clients / in-process batched (4)"]


def test_goals_pair_the_runs_of_each_round() -> None:
    """The machine was slow in round 2 for both cells: each round's ratio is 1.05, while the
    medians of the two cells, taken apart, give 0.9."""
    base = [20.0, 10.0, 12.0]
    served = [21.0, 10.5, 12.6]
    served[1], served[2] = 10.5, 10.8  # round 3's ratio 0.9; rounds 1 and 2: 1.05
    cells = [
        Cell("vision", IN_PROCESS, 16, "img", "", [run(r, [10.0]) for r in base]).finish(),
        Cell("vision", SERVED, 16, "img", "", [run(r, [10.0]) for r in served]).finish(),
    ]
    goal = {g.name: g for g in evaluate_goals(cells)}[
        "vision: served 16 clients / in-process batched (16)"
    ]
    assert goal.value == pytest.approx(1.05)
    assert goal.of_medians == pytest.approx(10.8 / 12.0)
    assert goal.rounds == 3
    assert goal.met is True
    table = goals_table([goal])
    assert "| 1.050 | 0.900 | 3 |" in table
    # Cells with different numbers of runs are not paired: the ratio of medians stands.
    cells[1].runs.pop()
    cells[1].finish()
    unpaired = {g.name: g for g in evaluate_goals(cells)}[goal.name]
    assert unpaired.value == pytest.approx(unpaired.of_medians)


def test_probe_goals_compare_cells_of_the_same_variant() -> None:
    cells = [
        cell("vl", IN_PROCESS, 1, 5.0, extra={"ttft_ms": 900.0}),
        cell("vl", SERVED, 1, 5.0, "StreamChat", extra={"ttft_ms": 800.0}),
        cell("vl", IN_PROCESS, 1, 50.0, TTFT_PROBE, extra={"ttft_ms": 20.0}),
        cell("vl", SERVED, 1, 40.0, TTFT_PROBE, extra={"ttft_ms": 23.5}),
        cell("vision", IN_PROCESS, 1, 5.0),
        cell("vision", SERVED, 1, 4.9),
    ]
    by_name = {g.name: g for g in evaluate_goals(cells)}
    ttft = by_name[f"vl: served adds to time to first token, p50 ms ({TTFT_PROBE})"]
    assert ttft.value == pytest.approx(3.5)
    assert ttft.met is True
    assert by_name["vision: served 1 client / in-process batch 1"].value == pytest.approx(0.98)
    # The probe's served cell is compared with the probe's in-process cell, not the main one.
    rows = {(r.variant, r.path): r for r in ratio_rows(cells)}
    assert rows[TTFT_PROBE, SERVED].throughput_ratio == pytest.approx(0.8)
    assert rows["StreamChat", SERVED].throughput_ratio == pytest.approx(1.0)


def test_json_round_trip_and_no_nan() -> None:
    cells = [
        Cell(
            "vl",
            SERVED,
            2,
            "tok",
            "StreamChat",
            [Run(1.5, 16, [Sample(0.7, 0.01, 1, {"ttft_ms": 50.0}), Sample(0.8)])],
        ).finish(),
        cell("vl", IN_PROCESS, 2, 12.0),
    ]
    text = results_to_json({"machine": "2 CPU cores, no GPU"}, cells)
    assert "NaN" not in text
    document = json.loads(text)
    assert {"meta", "cells", "ratios", "goals"} <= set(document)
    assert document["cells"][0]["figures"]["queue_p50_ms"] == pytest.approx(10.0)
    meta, back = results_from_json(text)
    assert meta["machine"] == "2 CPU cores, no GPU"
    assert back[0].key == cells[0].key
    assert back[0].runs[0].samples[0].extra == {"ttft_ms": 50.0}
    assert back[0].runs[0].samples[1].queue_s is None
    assert back[0].finish().figures["throughput"] == pytest.approx(cells[0].figures["throughput"])


def test_tables_render_missing_figures_as_dashes() -> None:
    table = cells_table([cell("edge", SERVED, 1, 50.0, "GetModelInfo")])
    row = table.splitlines()[-1]
    assert row.startswith("| edge | GetModelInfo | served | 1 | 50.00 unit/s | 10.0 | 10.0 | - |")


def test_results_md_sections() -> None:
    assert machine_slug("2 CPU cores, no GPU") == "2-cpu-cores-no-gpu"
    document = "# Results\n\nintro\n"
    once = replace_section(document, "a", "table one")
    assert once.endswith("<!-- bench:a -->\ntable one\n<!-- /bench:a -->\n")
    twice = replace_section(once, "a", "table two")
    assert "table one" not in twice
    assert twice.count("<!-- bench:a -->") == 1
    both = replace_section(twice, "b", "other")
    assert "table two" in both
    assert both.index("bench:a") < both.index("bench:b")
    anchored = replace_section("top\n<!-- bench:new-sections -->\nbottom\n", "c", "new")
    assert anchored.index("bench:c") < anchored.index("new-sections") < anchored.index("bottom")


def test_cpu_plan() -> None:
    plan = make_plan(Options())
    assert plan.profile == "cpu"
    assert plan.dtype == "float32"
    assert plan.concurrency["vision"] == (1, 4, 16)
    assert plan.repeats == 3
    # vl's server runs its default, iteration-level batching, bounded by the top concurrency.
    assert plan.vl_batching
    assert plan.server_flags("vision")[:4] == ["--device", "cpu", "--dtype", "float32"]
    assert "--torch-threads" in plan.server_flags("t2i")
    assert "--batching" in plan.server_flags("vl")
    assert plan.in_process_at("vision", 16)
    assert not plan.in_process_at("t2i", 2)
    targets = {SERVED: "a", ENVOY: "b"}
    assert plan.paths_at("vision", 16, targets) == targets
    assert plan.paths_at("vl", 2, targets) == {SERVED: "a"}
    assert make_plan(Options(quick=True)).profile == "tiny"


def test_gpu_plan_selects_gpu_paths_without_a_gpu() -> None:
    plan = make_plan(Options(device="cuda", compile=True))
    assert plan.profile == "gpu"
    assert plan.dtype == "bfloat16"
    assert plan.vl_batching
    flags = plan.server_flags("vl")
    assert flags[:5] == ["--device", "cuda", "--dtype", "bfloat16", "--compile"]
    assert flags[flags.index("--batch-max-size") + 1] == "16"
    assert "--torch-threads" not in plan.server_flags("vision")
    assert 16 in plan.concurrency["vision"]
    assert plan.in_process_at("t2i", 4)
    assert ENVOY in plan.paths_at("vl", 16, {SERVED: "a", ENVOY: "b"})
    assert make_plan(Options(device="cuda", dtype="fp16")).dtype == "float16"
    assert not make_plan(Options(device="cuda", batching=False)).vl_batching
    with pytest.raises(ValueError, match="device"):
        make_plan(Options(device="mps"))
    with pytest.raises(ValueError, match="dtype"):
        make_plan(Options(dtype="int8"))


def test_gpu_model_configs_are_real_size() -> None:
    from bench.models import SD_CONFIGS, VL_SIZES

    assert SD_CONFIGS["gpu"]["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert SD_CONFIGS["cpu"]["unet"]["cross_attention_dim"] == 768
    assert VL_SIZES["cpu"]["hidden"] == 896  # Qwen2.5-0.5B's text stack
    assert VL_SIZES["gpu"]["layers"] == 36  # Qwen2.5-VL-3B's
