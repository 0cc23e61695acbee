"""The quality harness's report: the published reference numbers and the markdown tables of
`quality.py` (T = 24 with ablations and model sizes, and the long-window report)."""
from __future__ import annotations

from pathlib import Path

NAMES = {"sines": "Sines", "stocks": "Stocks", "etth": "ETTh", "mujoco": "MuJoCo",
         "energy": "Energy", "fmri": "fMRI"}
METRIC_NAMES = {"context_fid": "Context-FID", "correlational": "Correlational",
                "discriminative": "Discriminative", "predictive": "Predictive"}
OURS, ORIGINAL = "TimeMAR (ours)", "Original (real data)"
# Diffusion-TS paper, Table 1 (T = 24), mean ± 95% t half-width over 5 repeats, as copied in
# PROTOCOL.md section 2.6. Columns: sines stocks etth mujoco energy fmri.
TABLE1 = {
    ("context_fid", "Diffusion-TS"): "0.006±.000 0.147±.025 0.116±.010 0.013±.001 0.089±.024 0.105±.006",
    ("correlational", "Diffusion-TS"): "0.015±.004 0.004±.001 0.049±.008 0.193±.027 0.856±.147 1.411±.042",
    ("discriminative", "Diffusion-TS"): "0.006±.007 0.067±.015 0.061±.009 0.008±.002 0.122±.003 0.167±.023",
    ("predictive", "Diffusion-TS"): "0.093±.000 0.036±.000 0.119±.002 0.007±.000 0.250±.000 0.099±.000",
    ("predictive", ORIGINAL): "0.094±.001 0.036±.001 0.121±.005 0.007±.001 0.250±.003 0.090±.001",
    ("context_fid", "TimeGAN"): "0.101±.014 0.103±.013 0.300±.013 0.563±.052 0.767±.103 1.292±.218",
    ("discriminative", "TimeGAN"): "0.011±.008 0.102±.021 0.114±.055 0.238±.068 0.236±.012 0.484±.042",
}
# Same paper, Table 2 (long windows, Diffusion-TS, means only), PROTOCOL.md section 2.6.
TABLE2 = {
    64: {("context_fid", "Diffusion-TS"): {"etth": "0.631", "energy": "0.135"},
         ("discriminative", "Diffusion-TS"): {"etth": "0.106", "energy": "0.078"}},
    128: {("context_fid", "Diffusion-TS"): {"etth": "0.787", "energy": "0.087"},
          ("discriminative", "Diffusion-TS"): {"etth": "0.144", "energy": "0.143"}},
    256: {("context_fid", "Diffusion-TS"): {"etth": "0.423", "energy": "0.126"},
          ("discriminative", "Diffusion-TS"): {"etth": "0.060", "energy": "0.290"}},
}
# Ablations and model size, beside the main table (the --preset column): name -> preset, model
# overrides, training-budget factor, what it is. Each runs on VARIANT_DATASETS (within --datasets).
VARIANTS = {
    "single-path": ("s", {"decomposition": False, "guidance": False}, 1,
                    "no decomposition: one encoder / decoder path on the window"),
    "no-guidance": ("s", {"guidance": False}, 1,
                    "the fine decoder path without the coarse-seasonal prior"),
    "one-scale": ("s", {"multiscale": False}, 1,
                  "no multi-scale: one token map of the latent length, predicted token by token"),
    "next-scale": ("s", {"causal_scales": 0}, 1,
                   "every token map drawn at once (`causal_scales=0`; the presets draw all maps "
                   "but the first token by token)"),
    "l": ("l", {}, 1, "preset `l`, same budget"),
    "s-2x": ("s", {}, 2, "preset `s`, twice the budget"),
    "l-2x": ("l", {}, 2, "preset `l`, twice the budget"),
}
VARIANT_DATASETS = ("stocks", "etth", "energy")


# --long: (dataset, T) in run and table order: Table 2's lengths, and ETTh at 512 as a stress test
LONG_JOBS = (("etth", 64), ("etth", 128), ("etth", 256), ("energy", 64), ("energy", 128),
             ("energy", 256), ("etth", 512))
CEILING_METRICS = ("discriminative", "context_fid")
CEILING = "TimeMAR reconstructions (ceiling)"


def reference(seq_len: int) -> dict[tuple[str, str], dict[str, str]]:
    """Published numbers for this window length: {(metric, method): {dataset: "mean±h"}}."""
    if seq_len == 24:
        return {k: dict(zip(NAMES, row.split())) for k, row in TABLE1.items()}
    return TABLE2.get(seq_len, {})


def fmt(mean: float, ci: float | None) -> str:
    """0.123±.004, the paper's style."""
    return f"{mean:.3f}" if ci is None else f"{mean:.3f}±{ci:.3f}".replace("±0.", "±.")


def columns(report: dict) -> list[tuple[str, str, str, int]]:
    """(report key, label, dataset, T) of the report's entries, in table order."""
    done = report["datasets"]
    if report["seq_len"]:  # one window length: one column per dataset
        return [(n, NAMES[n], n, report["seq_len"]) for n in NAMES if n in done]
    jobs = sorted(LONG_JOBS, key=lambda job: (list(NAMES).index(job[0]), job[1]))
    return [(f"{n}_T{T}", f"{NAMES[n]} T={T}", n, T) for n, T in jobs if f"{n}_T{T}" in done]


def markdown(report: dict) -> str:
    """The results table (metric x method rows, one column per dataset and window length), the
    training summary, the memorisation check, and the ablations and model sizes."""
    cols = columns(report)
    done = [report["datasets"][key] for key, *_ in cols]
    title = (f"T = {report['seq_len']}" if report["seq_len"] else
             "long windows (T = " + ", ".join(str(T) for T in sorted({T for *_, T in LONG_JOBS}))
             + ")")
    lines = [f"# TimeMAR sample quality, {title}", ""]
    if report["quick"]:
        lines += ["**Quick smoke run (tiny model, few steps and metric iterations): not a "
                  "benchmark result.**", ""]
    repeats = {r["repeats"] for r in done}
    lines += [f"Preset `{report['preset']}`, seed {report['seed']}, training budget "
              f"{report['train_minutes_budget']:g} min per dataset, holdout {report['holdout']:g}, "
              f"last run: commit `{report['commit']}`, device {report['device']}, torch "
              f"{report['torch']}, {report['created']} (each dataset's commit: below).",
              f"All windows of each dataset in [0, 1] vs as many generated windows; "
              f"mean ± 95% t half-width over {'/'.join(map(str, sorted(repeats))) or '?'} "
              "repeats; lower is better. Reference rows: Diffusion-TS paper, Table 1 (T = 24) "
              "or Table 2 (T = 64/128/256, means only), copied in PROTOCOL.md section 2.6.", "",
              "| metric | method | " + " | ".join(label for _, label, *_ in cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    refs = [reference(T) for *_, T in cols]
    for metric, label in METRIC_NAMES.items():
        ours = [r["metrics"].get(metric) for r in done]
        lines.append(f"| {label} | {OURS} | "
                     + " | ".join(fmt(m["mean"], m["ci95"]) if m else "—" for m in ours) + " |")
        if metric in CEILING_METRICS and any("ceiling" in r for r in done):
            cells = [r.get("ceiling", {}).get(metric) for r in done]
            lines.append(f"| {label} | {CEILING} | "
                         + " | ".join(fmt(m["mean"], m["ci95"]) if m else "—" for m in cells)
                         + " |")
        methods = dict.fromkeys(method for ref in refs for m, method in ref if m == metric)
        for method in methods:
            lines.append(f"| {label} | {method} | " + " | ".join(
                ref.get((metric, method), {}).get(n, "—") for ref, (_, _, n, _) in zip(refs, cols))
                + " |")
    lines += ["", f"{CEILING}: the real windows encoded to tokens and decoded "
              "(`evaluate --reconstruct`), the best the samples could score with this tokenizer; "
              "samples far above it point at the transformer, near it at the VQ-VAE.", "",
              "| dataset | windows | train minutes | steps (stage 1 / 2) | stage-2 arithmetic | "
              "stage-2 cross-entropy per scale (nats) | sampling s | machine | checkpoint | "
              "commit, date |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (_, label, *_), r in zip(cols, done):
        ce = " ".join(f"{c:.2f}" for c in r.get("ce_per_scale") or [])
        if r.get("heldout_ce_mean_token") is not None:
            ce += (f"; per token {r['ce_mean_token']:.2f} "
                   f"(held-out {r['heldout_ce_mean_token']:.2f})")
        lines.append(f"| {label} | {r['n_real']} | {r['train_minutes']} | "
                     f"{r['steps']['stage1']} / {r['steps']['stage2']} | "
                     f"{r.get('precision', 'fp32')} | {ce} | "
                     f"{r['sample_seconds']:.1f} | {r.get('machine', '—')} | "
                     f"`{Path(r['ckpt']).name}`"
                     f"{' (reused)' if r['reused'] else ''} | `{r['commit'][:12]}`, "
                     f"{r['created'][:10]} |")
    lines += ["", "Memorisation (`evaluate`'s check, `timemar_engine/metrics/memorization.py`), "
              "against real windows held out of training: near-copies (within RMS 1e-3 of a "
              "training window; the flag), and the share of generated windows under the held-out "
              "windows' 5% quantile of the distance to the closest training window (DCR) and of "
              "that distance over the distance to other held-out windows (NNDR): ~5% for new "
              "data, towards 100% for copies.", "",
              "| dataset | near-copies (held-out real) | DCR under held-out 5% | NNDR under "
              "held-out 5% | held-out windows | flag |", "|---|---|---|---|---|---|"]
    for (_, label, *_), r in zip(cols, done):
        m = r.get("memorization") or {}
        if "dcr" not in m:
            lines.append(f"| {label} | {m.get('skipped', 'not run')} | | | | |")
            continue
        seen = "" if m["holdout_unseen"] else " (seen in training)"
        lines.append(f"| {label} | {100 * m['near_copies']:.2f}% "
                     f"({100 * m['probe_near_copies']:.2f}%) | "
                     f"{100 * m['dcr']['below_probe_q05']:.1f}% | "
                     f"{100 * m['nndr']['below_probe_q05']:.1f}% | "
                     f"{m['n_reference'] + m['n_probe']}{seen} | "
                     f"{'SUSPECT' if m['suspect'] else 'ok'} |")
    lines += variants_markdown(report)
    lines += relabel_notes(report)
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{NAMES[n]} ({why})"
                                             for n, why in report["skipped"].items())]
    return "\n".join(lines) + "\n"


def relabel_notes(report: dict) -> list[str]:
    """One line per note of entries moved between the main table and a variant ("relabeled")."""
    entries = [("main table", report["datasets"])] + [
        (f"`{v}`", report["variants"].get(v, {})) for v in VARIANTS]
    notes: dict[str, list[str]] = {}
    for where, done in entries:
        for key, r in done.items():
            if "relabeled" in r:
                notes.setdefault(r["relabeled"], []).append(f"{NAMES.get(key, key)} ({where})")
    if not notes:
        return []
    return ["", *(f"Moved, {', '.join(keys)}: {note}." for note, keys in notes.items())]


def variants_markdown(report: dict) -> list[str]:
    """The ablations and model sizes, each dataset's main-table row first (empty without any)."""
    variants = report.get("variants") or {}
    names = [n for n in NAMES if any(n in v for v in variants.values())]
    if not names:
        return []
    lines = ["", "## Ablations and model size", "",
             "Each variant trained and scored as the main table (same seed, holdout and "
             "repeats); " + "; ".join(f"`{k}`: {v[3]}" for k, v in VARIANTS.items()) + ".", "",
             "| dataset | model | parameters | train minutes (budget) | steps (stage 1 / 2) | "
             + " | ".join(METRIC_NAMES.values()) + " | commit, date |",
             "|---|---|---|---|---|" + "---|" * len(METRIC_NAMES) + "---|"]
    for n in names:
        rows = [(f"`{report['preset']}` (main table)", report["datasets"][n],
                 report["train_minutes_budget"])] if n in report["datasets"] else []
        rows += [(f"`{v}`", variants[v][n], variants[v][n]["train_minutes_budget"])
                 for v in VARIANTS if n in variants.get(v, {})]
        for label, r, budget in rows:
            cells = [fmt(m["mean"], m["ci95"]) if (m := r["metrics"].get(k)) else "—"
                     for k in METRIC_NAMES]
            params = f"{r['parameters'] / 1e6:.2f}M" if "parameters" in r else "—"
            lines.append(f"| {NAMES[n]} | {label} | {params} | {r['train_minutes']} ({budget:g}) | "
                         f"{r['steps']['stage1']} / {r['steps']['stage2']} | "
                         + " | ".join(cells) + f" | `{r['commit'][:12]}`, {r['created'][:10]} |")
    return lines
