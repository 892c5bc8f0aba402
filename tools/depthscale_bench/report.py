"""The bench's outputs: targets read off the results, results.json, results.md and PNG plots."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = {"ort_speedup": 3.0, "window_slope": 1.15, "ort_rss_ratio": 1.05, "bits_per_weight": 2.1,
           "decode_speedup": 100.0, "decode_iterations": 0.05, "early_exit_speedup": 1.8, "active_set_tol0_overhead": 1.05}


def targets(results: dict) -> list[dict]:
    """The bench's targets (speed, length, memory, size; decode), each with its figure and whether it is met
    (read at the plan's anchor); only those of the sections that ran."""
    b, n, T = results["plan"]["anchor"]
    rows = []
    if "latency" in results:
        anchor = [r for r in results["latency"] if r["model"] == "reference" and (r["batch"], r["seq"], r["max_iters"],
                  r["threads"]) == (b, n, T, 1) and "skipped" not in r]
        rows.append(("ORT speed-up over eager", f"reference, batch {b}, seq {n}, T {T}, 1 thread",
                     anchor[0]["eager_over_ort"] if anchor else None, ">=", TARGETS["ort_speedup"]))
    if "sequence" in results:
        rows.append(("sequence slope, window attention", f"log-log fit over seq {results['sequence']['rows'][0]['seq']}.."
                     f"{results['sequence']['rows'][-1]['seq']}, T {results['sequence']['max_iters']}",
                     results["sequence"]["window_slope"], "<=", TARGETS["window_slope"]))
    if "depth" in results:
        rows.append(("ORT peak RSS ratio across T", results["depth"]["ratio_label"],
                     results["depth"]["onnxruntime_peak_ratio"], "<=", TARGETS["ort_rss_ratio"]))
    if "size" in results:
        rows.append(("bits per packed BitLinear weight", "2-bit codes (4 per byte), padding included",
                     results["size"]["bits_per_weight"], "<=", TARGETS["bits_per_weight"]))
    if "decode" in results:
        d = results["decode"]
        at = d["speedup_at_longest"]
        rows.append(("decode step speed-up over recomputing", f"ORT recompute / ORT decode step, N {at['seq']}, T "
                     f"{d['max_iters']}, the lower of batch {', '.join(str(k) for k in at['by_batch'])}",
                     at["min_over_batches"], ">=", TARGETS["decode_speedup"]))
        rows.append(("self-decoder cache bytes across N", d["cache"]["self_decoder_ratio"]["label"],
                     d["cache"]["self_decoder_ratio"]["value"], "==", 1.0))
        worst = max(d["iterations"], key=lambda r: r["relative_difference"])
        rows.append(("decode iterations against the whole forward's", "|decode - whole| / whole, mean iterations per "
                     "token, worst of " + ", ".join(f"{r['model']} (tol {r['tol']:g})" for r in d["iterations"]),
                     worst["relative_difference"], "<=", TARGETS["decode_iterations"]))
    if "early_exit" in results:
        t = results["early_exit"]["target"]
        where = f"{t['model']}, batch {t['batch']}, {t['seq']} tokens"
        rows.append(("early-exit speed-up over tol 0", f"{where}, tol {t['tol']:g} (>= 99 % agreement)",
                     t["speedup_over_tol0"], ">=", TARGETS["early_exit_speedup"]))
        rows.append(("active-set time at tol 0 over the dense loop's", where, t["tol0_active_over_dense"], "<=",
                     TARGETS["active_set_tol0_overhead"]))
    met = {">=": lambda f, g: f >= g, "<=": lambda f, g: f <= g, "==": lambda f, g: f == g}
    return [{"target": name, "where": where, "figure": float(fig) if fig is not None else None, "goal": f"{op} {goal}",
             "met": fig is not None and met[op](fig, goal)} for name, where, fig, op, goal in rows]


def write(results: dict, out: Path) -> None:
    """results.json, results.md and the plots, into the directory `out` (which exists)."""
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    for key, plot in (("latency", plot_latency), ("depth", plot_depth), ("sequence", plot_sequence),
                      ("early_exit", plot_early_exit), ("decode", plot_decode)):
        if key in results:
            plot(results, out)


def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f}"


def _mib(b: float) -> str:
    return f"{b / 2 ** 20:,.3f}"


def _opt_ms(s) -> str:
    return "n/a" if s is None else _ms(s)


def decode_markdown(d: dict) -> list[str]:
    """The decode section's tables: speed, cache bytes, iterations."""
    T = d["max_iters"]
    lines = ["", f"## h. Decode against recomputing (reference, T {T} = the decode artifact's cap, tol 0, 1 thread; "
             f"prefill.onnx + decode.onnx through depthscale_runtime, and eager depthscale.decode from the same "
             f"prefilled cache; recompute: the whole forward over the N tokens)", "",
             "Decode: the median of interleaved steps after warm-up steps, each step one new token per row "
             "(teacher-forced), the last one decoding token N; the rows of a batch repeat one prompt, prefilled once "
             "(ORT prefill s: batch 1). Recompute: the whole forward over those N tokens, the median of runs after one "
             "warm-up, or one cold run (marked *) where a run takes longer than the plan's budget; eager's only up to "
             "batch x N = " + f"{d['eager_recompute_tokens']:,} tokens. ms per token = ms per step / batch.", "",
             "| batch | N | ORT decode ms/token | eager decode ms/token | ORT recompute ms/token | eager recompute ms/token | "
             "ORT decode tokens/s | ORT recompute / ORT decode | eager recompute / eager decode | ORT prefill s | "
             "decode steps, recompute reps | ORT vs eager decode: logits max diff, iterations equal | last step vs recompute logits max diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["speed"]:
        er, em = r["eager_recompute_over_eager_decode"], r["eager_recompute_ms_per_token"]
        cold_o = "" if r["ort_recompute_warmed_up"] else "*"
        cold_e = "" if r["eager_recompute_warmed_up"] in (True, None) else "*"
        lines.append(f"| {r['batch']} | {r['seq']} | {r['ort_decode_ms_per_token']:,.2f} | {r['eager_decode_ms_per_token']:,.2f} | "
                     f"{r['ort_recompute_ms_per_token']:,.1f}{cold_o} | "
                     f"{'n/a' if em is None else f'{em:,.1f}{cold_e}'} | "
                     f"{r['ort_decode_tokens_per_s']:,.0f} | **{r['ort_recompute_over_ort_decode']:,.0f}x** | "
                     f"{'n/a' if er is None else f'{er:,.0f}x'} | {r['ort_prefill_s']:.2f} | {r['decode_steps_timed']}, "
                     f"{r['recompute_reps']} | {r['decode_logits_max_abs_diff']:.1e}, {r['decode_iterations_equal']} | "
                     f"{r['last_step_vs_recompute_logits_max_abs_diff']:.1e} |")
    c = d["cache"]
    lines += ["", f"### Cache bytes per sequence (the runtime's prefill caches' nbytes, batch {c['batch']}, float32)", "",
              f"Against N (T {c['by_seq'][0]['max_iters_cap']}): the self-decoder's window caches (prelude + core) against "
              "YOCO's global KV (capacity N).", "",
              "| N | prelude MiB | core MiB | self-decoder MiB | global KV MiB | total MiB | = docs/decoding.md's formula |",
              "|---|---|---|---|---|---|---|"]
    for r in c["by_seq"]:
        lines.append(f"| {r['seq']} | {_mib(r['prelude'])} | {_mib(r['core'])} | {_mib(r['self_decoder'])} | "
                     f"{_mib(r['global_kv'])} | {_mib(r['total'])} | {r['matches_formula']} |")
    lines.append(f"\n{c['self_decoder_ratio']['label']}: **{c['self_decoder_ratio']['value']:.6f}**")
    lines += ["", f"Against T (N {c['by_iters'][0]['seq']}; eager depthscale.decode.prefill with cache_iters T, and the "
              "runtime's prefill of the artifacts exported with cap T where the bench has one):", "",
              "| T | prelude MiB | core MiB | self-decoder MiB | global KV MiB | runtime's prefill (same bytes) | = formula |",
              "|---|---|---|---|---|---|---|"]
    for r in c["by_iters"]:
        e = r["eager"]
        ort = "n/a" if "onnxruntime" not in r else ("yes" if r["onnxruntime"] == e else f"**no**: {r['onnxruntime']}")
        lines.append(f"| {r['max_iters_cap']} | {_mib(e['prelude'])} | {_mib(e['core'])} | {_mib(e['self_decoder'])} | "
                     f"{_mib(e['global_kv'])} | {ort} | {r['matches_formula']} |")
    lines += ["", "### Decode iterations per token against the whole forward's exit iterations (ONNX Runtime; the same "
              "tokens: prefill the prompt, decode the rest one token per step, teacher-forced)", "",
              "| model | batch | prompt | new tokens | T | tol | decode mean iterations per token | whole forward mean exit "
              "iteration | relative difference | identical per token | Loop iterations per step (batch max) | exited early |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["iterations"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['prompt']} | {r['new_tokens']} | {r['max_iters']} | {r['tol']:g} | "
                     f"{r['decode_mean_iterations']:.3f} | {r['full_forward_mean_exit_iteration']:.3f} | "
                     f"{r['relative_difference']:.2%} | {r['identical']} | {r['decode_loop_iterations_per_step']:.2f} | "
                     f"{r['early_exit_fraction']:.0%} |")
    return lines


def markdown(results: dict) -> str:
    meta = results["meta"]
    only = f", sections {', '.join(results['only'])} only" if results.get("only") else ""
    lines = [f"# depthscale-bench results ({results['plan']['name']} plan{only})", "",
             f"{meta['machine']}; {meta['date']}; torch {meta['versions']['torch']}, onnxruntime "
             f"{meta['versions']['onnxruntime']}; bench took {meta['seconds']:.0f} s. Command: `{meta['command']}`", "",
             "## Targets", "", "| target | where | figure | goal | met |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        fig = "n/a" if t["figure"] is None else f"{t['figure']:.3f}"
        lines.append(f"| {t['target']} | {t['where']} | {fig} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    if "latency" in results:
        lines += ["", "## a. Latency (medians of interleaved repetitions, tol 0: every token runs all T iterations)", "",
                  "| model | batch | seq | T | threads | eager ms | ORT ms | eager / ORT | ORT tokens/s | logits max diff | iterations equal |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["latency"]:
            if "skipped" in r:
                lines.append(f"| {r['model']} | {r['batch']} | {r['seq']} | {r['max_iters']} | {r['threads']} | "
                             f"skipped: {r['skipped']} | | | | | |")
                continue
            lines.append(f"| {r['model']} | {r['batch']} | {r['seq']} | {r['max_iters']} | {r['threads']} | "
                         f"{_ms(r['eager_median_s'])} | {_ms(r['ort_median_s'])} | {r['eager_over_ort']:.2f} | "
                         f"{r['ort_tokens_per_s']:,.0f} | {r['logits_max_abs_diff']:.1e} | {r['iterations_equal']} |")
    if "depth" in results:
        d = results["depth"]
        lines += ["", f"## b. Depth: peak RSS of a fresh process (batch {d['batch']}, seq {d['seq']}, 1 thread)", "",
                  "| backend | T | peak RSS MiB | RSS after load MiB | run s |", "|---|---|---|---|---|"]
        for r in d["rows"]:
            lines.append(f"| {r['backend']} | {r['max_iters']} | {r['peak_rss_mib']:.1f} | {r['rss_after_load_mib']:.1f} | "
                         f"{r['run_s']:.2f} |")
        lines.append(f"\n{d['ratio_label']}: eager {d['eager_peak_ratio']:.3f}, ONNX Runtime {d['onnxruntime_peak_ratio']:.3f}")
    if "sequence" in results:
        s = results["sequence"]
        lines += ["", f"## c. Sequence length (ONNX Runtime, batch 1, T {s['max_iters']}, 1 thread)", "",
                  "| seq | window attention ms | full attention ms | full / window |", "|---|---|---|---|"]
        for r in s["rows"]:
            lines.append(f"| {r['seq']} | {_ms(r['window_median_s'])} | {_ms(r['full_median_s'])} | "
                         f"{r['full_median_s'] / r['window_median_s']:.2f} |")
        lines.append(f"\nlog-log slope: window {s['window_slope']:.3f} (pairwise "
                     f"{', '.join(f'{x:.2f}' for x in s['window_pairwise_slopes'])}), full {s['full_slope']:.3f} "
                     f"(pairwise {', '.join(f'{x:.2f}' for x in s['full_pairwise_slopes'])})")
    if "size" in results:
        z = results["size"]
        caps = ", ".join(f"T cap {c}: {b:,} B" for c, b in z["onnx_bytes_by_cap"].items())
        lines += ["", "## d. Size", "", f"- model.onnx by T cap: {caps} (ratio {z['onnx_bytes_ratio_largest_over_smallest_cap']:.4f})",
                  f"- BitLinear: {z['bitlinear_weights']:,} weights in {z['bitlinear_tensors']} tensors, {z['packed_bytes']:,} B "
                  f"packed: **{z['bits_per_weight']:.3f} bits per weight** ({z['bits_per_weight_with_scales']:.4f} with the "
                  f"float32 scales)",
                  f"- artifact {z['artifact_bytes']:,} B (model.onnx {z['onnx_bytes']:,} B) against the float32 checkpoint "
                  f"{z['checkpoint_fp32_bytes']:,} B: **{z['artifact_over_checkpoint']:.3f}x**",
                  "- model.onnx initializers by dtype: " + ", ".join(f"{k} {v:,} B" for k, v in z["onnx_initializer_bytes_by_dtype"].items())]
    if "unrolled" in results:
        u = results["unrolled"]
        lines += ["", f"## e. Loop against unrolled (T {u['steps']}, batch 1, seq {u['seq']}, 1 thread, ONNX Runtime)", "",
                  "| form | model.onnx bytes | nodes | export s | session creation s | latency ms |", "|---|---|---|---|---|---|"]
        for k in ("loop", "unrolled"):
            r = u[k]
            lines.append(f"| {k} | {r['onnx_bytes']:,} | {r['nodes']:,} | {r['export_s']:.1f} | {r['session_create_median_s']:.2f} | "
                         f"{_ms(r['latency_median_s'])} |")
        lines.append(f"\nunrolled / loop: bytes {u['unrolled_over_loop_onnx_bytes']:.2f}x, session creation "
                     f"{u['unrolled_over_loop_session_create_median_s']:.2f}x, latency {u['unrolled_over_loop_latency_median_s']:.2f}x; "
                     f"identical outputs: {u['same_outputs']}")
    if "early_exit" in results:
        lines += early_exit_markdown(results["early_exit"])
    if "machine_limit" in results:
        g = results["machine_limit"]
        m = g["model"]
        lines += ["", "## g. The machine's limit (ONNX Runtime, X [m, k] · constant W [k, n]; each product's fastest repetition, the best product counts)", "",
                  "| threads | m x k x n | int8 GOPS (uint8 x int8) | float32 GFLOPS |", "|---|---|---|---|"]
        for t, p in g["peak_by_threads"].items():
            for r in p["products"]:
                lines.append(f"| {t} | {r['m']} x {r['k']} x {r['n']} | {r['int8_ops_per_s'] / 1e9:,.0f} | "
                             f"{r['fp32_ops_per_s'] / 1e9:,.0f} |")
            lines.append(f"| {t} | **best** | **{p['int8_ops_per_s'] / 1e9:,.0f}** | **{p['fp32_ops_per_s'] / 1e9:,.0f}** |")
        lines += ["", f"The reference model at batch {m['batch']}, seq {m['seq']}, T {m['max_iters']}, 1 thread (one profiled run, "
                  f"{m['profiled_run_s']:.3f} s): {m['bitlinear_ops'] / 1e9:,.3g} G BitLinear integer ops; inside MatMulInteger "
                  f"{m['matmulinteger_ops_per_s'] / 1e9:,.0f} GOPS = **{m['matmulinteger_fraction_of_int8_peak']:.0%} of the int8 "
                  f"peak**; end to end {m['end_to_end_bitlinear_ops_per_s'] / 1e9:,.0f} GOPS = "
                  f"{m['end_to_end_fraction_of_int8_peak']:.0%}.", "", "Time by op type (share of kernel time): "
                  + ", ".join(f"{op} {share:.0%}" for op, share in list(m["time_share_by_op"].items())[:12])]
    if "decode" in results:
        lines += decode_markdown(results["decode"])
    return "\n".join(lines) + "\n"


@contextmanager
def _figure(path: Path, title: str, xlabel: str, ylabel: str, size=(5, 3.5), legend=(0.12, 0.88)):
    """Yields the axes of a new figure; saves it as PNG to `path` with title, labels and the legend's
    upper-left corner at `legend` (figure coordinates)."""
    fig, ax = plt.subplots(figsize=size)
    yield ax
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.legend(loc="upper left", bbox_to_anchor=legend, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict, out: Path) -> None:
    path = out / "latency.png"
    rows = [r for r in results["latency"] if "skipped" not in r]
    with _figure(path, "a. Latency, eager against ONNX Runtime (CPU)", "", "median latency (ms, log)",
                 size=(11, 4.5)) as ax:
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["eager_median_s"] * 1e3 for r in rows], width=0.4, label="eager PyTorch")
        ax.bar([i + 0.2 for i in x], [r["ort_median_s"] * 1e3 for r in rows], width=0.4, label="ONNX Runtime")
        ax.set_yscale("log")
        ax.set_xticks(list(x), [f"{r['model'][:4]} b{r['batch']} s{r['seq']} T{r['max_iters']} {r['threads']}t"
                                for r in rows], rotation=70, ha="right", fontsize=7)


def plot_depth(results: dict, out: Path) -> None:
    path = out / "depth.png"
    d = results["depth"]
    with _figure(path, "b. Memory is flat in depth", "T (iterations)", "peak RSS (MiB)") as ax:
        for backend in ("eager", "onnxruntime"):
            rows = [r for r in d["rows"] if r["backend"] == backend]
            ax.plot([r["max_iters"] for r in rows], [r["peak_rss_mib"] for r in rows], "o-", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)


def plot_sequence(results: dict, out: Path) -> None:
    path = out / "sequence.png"
    s = results["sequence"]
    with _figure(path, f"c. Latency against length (T {s['max_iters']})", "sequence length",
                 "ORT latency (s)") as ax:
        seqs = [r["seq"] for r in s["rows"]]
        ax.loglog(seqs, [r["window_median_s"] for r in s["rows"]], "o-", base=2,
                  label=f"window attention (slope {s['window_slope']:.2f})")
        ax.loglog(seqs, [r["full_median_s"] for r in s["rows"]], "s-", base=2,
                  label=f"full attention (slope {s['full_slope']:.2f})")


def early_exit_markdown(e: dict) -> list[str]:
    t = e["target"]
    lines = ["", "## f. Early exit: the dense loop against the active set (ONNX Runtime, 1 thread; ms per run, medians)", "",
             f"Target: {t['model']} at its own length ({t['seq']} tokens), batch {t['batch']}: the largest tol with >= 99 % "
             f"top-1 agreement with the full-depth output is {t['tol']:g} (agreement {t['agreement']:.4f}); there the active "
             f"set runs **{t['speedup_over_tol0']:.2f}x** faster than the dense loop at tol 0 (ideal {t['ideal_speedup']:.2f}x, "
             f"T / mean exit iteration). At tol 0 the default (active-set) graph takes **{t['tol0_active_over_dense']:.3f}x** "
             f"the dense loop's time. Crossover (active-set steps from the first iteration cost as much as dense ones) at a "
             f"running fraction of " + ("n/a" if t["crossover_running_fraction"] is None else
                                         f"{t['crossover_running_fraction']:.2f}") + "."]
    for r in e["runs"]:
        batches = list(r["rows"][0]["by_batch"])
        loops = [k[:-3] for k in r["rows"][0]["by_batch"][batches[0]] if k.endswith("_ms")]
        lines += ["", f"### {r['model']} ({r['task']}), {r['seq']} tokens, T {r['max_iters']}, {r['examples']} examples", "",
                  "| tol | accuracy | agreement with full depth | mean exit iteration | "
                  + " | ".join(f"b{b} {loop}" for b in batches for loop in loops) + " | "
                  + " | ".join(f"b{b} speed-up" for b in batches) + " |",
                  "|" + "---|" * (4 + len(batches) * (len(loops) + 1))]
        for row in r["rows"]:
            lines.append(f"| {row['tol']:g} | {row['accuracy']:.4f} | {row['agreement_with_full_depth']:.4f} | "
                         f"{row['mean_exit_iteration']:.2f} | "
                         + " | ".join(f"{row['by_batch'][b][loop + '_ms']:.1f}" for b in batches for loop in loops) + " | "
                         + " | ".join(f"{row['by_batch'][b]['active_speedup_over_dense_tol0']:.2f}" for b in batches) + " |")
        lines.append("\nspeed-up: the active-set default against the dense loop at tol 0, same batch. Every loop's outputs "
                     "identical: " + str(all(row["loops_identical"] for row in r["rows"])))
    return lines


def plot_early_exit(results: dict, out: Path) -> None:
    path = out / "early_exit.png"
    e = results["early_exit"]
    run = e["runs"][0]
    b = str(e["target"]["batch"])
    tols = [max(r["tol"], 1e-4) for r in run["rows"]]
    with _figure(path, f"f. Early exit, {run['model']} batch {b}", "tol (tol 0 drawn at 1e-4)",
                 "ms per run", legend=(0.14, 0.45)) as ax:
        for loop in e["loops"]:
            if f"{loop}_ms" in run["rows"][0]["by_batch"][b]:
                ax.semilogx(tols, [r["by_batch"][b][f"{loop}_ms"] for r in run["rows"]], "o-", label=f"{loop} loop")
        ax2 = ax.twinx()
        ax2.semilogx(tols, [r["agreement_with_full_depth"] for r in run["rows"]], "s--", color="C3",
                     label="agreement with full depth")
        ax2.set_ylabel("top-1 agreement")
        ax2.set_ylim(0, 1.02)


def plot_decode(results: dict, out: Path) -> None:
    d = results["decode"]
    rows = d["speed"]
    kinds = [("ort_decode_ms_per_token", "ORT decode"), ("eager_decode_ms_per_token", "eager decode"),
             ("ort_recompute_ms_per_token", "ORT recompute"), ("eager_recompute_ms_per_token", "eager recompute")]
    with _figure(out / "decode_latency.png", f"h. Decode against recomputing (T {d['max_iters']}, 1 thread)",
                 "batch, N; below: ORT recompute / ORT decode step",
                 "ms per new token (log)", size=(9, 4), legend=(0.8, 0.86)) as ax:
        width = 0.2
        for k, (key, label) in enumerate(kinds):
            xs = [i + (k - 1.5) * width for i, r in enumerate(rows) if r[key] is not None]
            ax.bar(xs, [r[key] for r in rows if r[key] is not None], width=width, label=label)
        ax.set_yscale("log")
        ax.set_xlim(-0.5, len(rows) + 0.6)                         # room for the legend on the right
        ax.set_xticks(range(len(rows)), [f"batch {r['batch']}, N {r['seq']}\n{r['ort_recompute_over_ort_decode']:,.0f}x"
                                         for r in rows], fontsize=8)
    c = d["cache"]
    with _figure(out / "decode_cache_seq.png", f"h. Cache per sequence against N (T {c['by_seq'][0]['max_iters_cap']})",
                 "N (tokens)", "MiB", legend=(0.16, 0.86)) as ax:
        seqs = [r["seq"] for r in c["by_seq"]]
        for key, label, style in (("prelude", "prelude window caches", "v-"), ("core", "core window caches", "s-"),
                                  ("self_decoder", "self-decoder (prelude + core)", "o-"), ("global_kv", "global KV", "^-")):
            ax.plot(seqs, [r[key] / 2 ** 20 for r in c["by_seq"]], style, label=label)
        ax.set_xscale("log", base=2)
    with _figure(out / "decode_cache_iters.png", f"h. Cache per sequence against T (N {c['by_iters'][0]['seq']})",
                 "T (the cache's iterations: the artifact's cap)", "MiB", legend=(0.16, 0.86)) as ax:
        its = [r["max_iters_cap"] for r in c["by_iters"]]
        for key, label, style in (("prelude", "prelude window caches", "v-"), ("core", "core window caches", "s-"),
                                  ("global_kv", "global KV", "^-")):
            ax.plot(its, [r["eager"][key] / 2 ** 20 for r in c["by_iters"]], style, label=label)
        ort = [r for r in c["by_iters"] if "onnxruntime" in r]
        ax.plot([r["max_iters_cap"] for r in ort], [r["onnxruntime"]["core"] / 2 ** 20 for r in ort], "kx", ms=9,
                label="core, runtime's prefill")
        ax.set_xscale("log", base=2)
    it = d["iterations"]
    with _figure(out / "decode_iterations.png", "h. Decode iterations against the whole forward's", "",
                 "mean iterations per token", legend=(0.14, 0.86)) as ax:
        x = range(len(it))
        ax.bar([i - 0.2 for i in x], [r["decode_mean_iterations"] for r in it], width=0.4, label="decode steps")
        ax.bar([i + 0.2 for i in x], [r["full_forward_mean_exit_iteration"] for r in it], width=0.4,
               label="whole forward, same tokens")
        ax.set_xticks(list(x), [f"{r['model']} (T {r['max_iters']}, tol {r['tol']:g})" for r in it], fontsize=8)
        ax.set_ylim(0, max(r["max_iters"] for r in it) * 1.25)
