#!/usr/bin/env python3
"""Ship the best registration model of a reg_synth run with a model card.

Picks the trained row (not the identity) with the best validation DSC (the
best check in its training folder's validation.json; a run without validation
falls back to the test pairs, and the card says so), copies its model.pt, the config.json and metrics.jsonl of its
pretraining and fine-tuning runs and the run's pair.png into --out, and writes
README.md (data, pretraining, fine-tuning, wall times, test metrics per class,
every row for comparison) and card_measurements.json.

  .venv/bin/python scripts/reg_card.py --run runs/reg-jsrt-cpu --name reg-chest2d --out models/reg-chest2d \
      --what "2D chest radiographs (JSRT)" --command "build/apps/reg_synth run --config configs/reg-jsrt-cpu.json"
"""
import argparse
import json
import os
import shutil

import plot_validation
from seg_card import mean_std


def pair_values(row, metric, cls=None, scale=1.0):
    out = []
    for p in row["pairs"]:
        if metric == "folding":
            out.append(scale * p["folding"])
            continue
        names = [cls] if cls else list(p["classes"])
        vals = [p["classes"][n][metric] for n in names if p["classes"][n][metric] is not None]
        out.append(scale * sum(vals) / len(vals) if vals else None)
    return out


def fmt(values, digits):
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def last_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [json.loads(x) for x in f if x.strip()]
    return lines[-1] if lines else None


def phase_line(name, cfg, last):
    if last is None:
        return f"| {name} | not run | | | |"
    return (f"| {name} | {last['step']} steps × batch {cfg['batch_size']} | lr {cfg['lr']:g} ({cfg['lr_schedule']}) | "
            f"{last['elapsed_seconds'] / 60:.1f} min | {last['loss']:.4g} |")


def choice_text(a, best, chosen_by, validated, gain):
    what = (f"synthetic pretraining **{best['pretrain']}**, real fine-tuning "
            f"**{'yes' if best['finetune'] else 'no'}**")
    if chosen_by == "validation":
        text = (f"This is the row of `{a.run}` with the best validation DSC "
                f"({100 * validated[best['row']]:.1f} % on the held-out validation pairs of training images; "
                f"the step of each run was chosen the same way, never on test pairs): {what}.")
    else:
        text = (f"This is the best trained row of `{a.run}` by mean test DSC: {what}. **The test pairs chose "
                "it**, so its test numbers are optimistic for a new data set.")
    if gain is not None:
        text += f" On the test pairs it gains **{gain:+.1f} DSC points** over no registration."
    return text + " The other rows are listed below for comparison."


def validation_of(run, row):
    """The best validation DSC of the run a row's model comes from (None without validation)."""
    d = os.path.join(run, row["row"] if row["finetune"] else "pretrain-" + row["pretrain"])
    path = os.path.join(d, "validation.json")
    return json.load(open(path)).get("best") if os.path.exists(path) else None


def validation_curve(a, best, pre_dir, ft_dir):
    """curve.png in --out: the validation DSC of the shipped row's runs (fine-tuning drawn from the
    pretraining step it started from); the card's Markdown for it ('' without validation)."""
    runs = [(n, d) for n, d in (("pretraining", pre_dir), ("fine-tuning", ft_dir))
            if d and os.path.exists(os.path.join(d, "validation.json"))]
    if not runs:
        return ""
    start = best.get("pretrain_step", 0) if pre_dir else 0
    plot_validation.plot([(n, d, start if n == "fine-tuning" else 0) for n, d in runs],
                         os.path.join(a.out, "curve.png"), f"{a.name}: validation DSC, the steps taken (stars)")
    return ("![validation curve](curve.png)\n\n*Validation DSC of each phase against its step; the star is the "
            "step taken. Fine-tuning starts from the pretraining's star.*\n\n")


def unregistered_from(run, best):
    """The identity row of another run on the same test pairs ([] without --unregistered-from)."""
    if not run:
        return []
    rows = [r for r in json.load(open(os.path.join(run, "results.json")))["rows"] if not r["model"]]
    pairs = lambda r: [(p["moving"], p["fixed"]) for p in r["pairs"]]  # noqa: E731
    if not rows or pairs(rows[0]) != pairs(best):
        raise SystemExit(f"--unregistered-from {run}: no identity row on the same test pairs")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--what", required=True, help="the images, e.g. '2D chest radiographs (JSRT)'")
    p.add_argument("--command", default="")
    p.add_argument("--status", default="", help="a paragraph on what the model is good for (Markdown)")
    p.add_argument("--unregistered-from", default="",
                   help="a run whose identity row (same test pairs) gives the gain when --run has none")
    a = p.parse_args()
    res = json.load(open(os.path.join(a.run, "results.json")))
    rows = res["rows"]
    trained = [r for r in rows if r["model"]]
    validated = {r["row"]: validation_of(a.run, r) for r in trained}
    chosen_by = "validation" if all(v is not None for v in validated.values()) else "test"
    if chosen_by == "validation":
        best = max(trained, key=lambda r: validated[r["row"]])
    else:
        best = max(trained, key=lambda r: mean_std(pair_values(r, "dice"))[0])
    has_identity = any(not r["model"] for r in rows)
    shown = rows if has_identity else unregistered_from(a.unregistered_from, best) + rows
    identity = [r for r in shown if not r["model"]]
    gain = (mean_std(pair_values(best, "dice", None, 100))[0] -
            mean_std(pair_values(identity[0], "dice", None, 100))[0]) if identity else None
    cfg = res["config"]
    pre_dir = os.path.join(a.run, "pretrain-" + best["pretrain"]) if best["pretrain"] != "none" else None
    ft_dir = os.path.join(a.run, best["row"]) if best["finetune"] else None
    os.makedirs(a.out, exist_ok=True)
    shutil.copy(best["model"], os.path.join(a.out, "model.pt"))
    shutil.copy(os.path.join(ft_dir or pre_dir, "config.json"), os.path.join(a.out, "config.json"))
    for tag, d in (("pretrain", pre_dir), ("finetune", ft_dir)):
        if d:
            shutil.copy(os.path.join(d, "metrics.jsonl"), os.path.join(a.out, f"{tag}_metrics.jsonl"))
    shutil.copy(os.path.join(a.run, "pair.png"), os.path.join(a.out, "preview.png"))
    curve = validation_curve(a, best, pre_dir, ft_dir)
    classes = cfg["data"]["classes"]
    per_class = "\n".join(
        f"| {c} | {fmt(pair_values(best, 'dice', c, 100), 1)} | {fmt(pair_values(best, 'asd', c), 2)} | "
        f"{fmt(pair_values(best, 'hd95', c), 2)} |" for c in classes)
    all_rows = "\n".join(
        f"| {r['pretrain']}{' (**shipped**)' if r is best else ''} | {'yes' if r['finetune'] else 'no'} | {fmt(pair_values(r, 'dice', None, 100), 1)} | "
        f"{fmt(pair_values(r, 'asd'), 2)} | {fmt(pair_values(r, 'hd95'), 2)} | "
        f"{fmt(pair_values(r, 'folding', None, 100), 3)} |" for r in shown)
    syn = cfg["synthetic"]
    pre_text = {"none": "none (trained on real pairs only)",
                "mrbs": f"{syn['pairs_per_image']} MRBS pairs per training image (levels {syn['mrbs']})",
                "drdm": f"{syn['pairs_per_image']} DRDM pairs per training image (model `{syn['drdm_model']}`, "
                        f"levels (T'_aug, T'_syn) {syn['drdm_levels']})"}[best["pretrain"]]
    size = " × ".join(str(s) for s in cfg["data"]["size"])
    card = f"""# {a.name}: VoxelMorph for {a.what}, from the Table-3 grid

A VoxelMorph registration network (Balakrishnan et al. 2019, public default
widths, diffeomorphic: 7 squarings at half resolution) for inter-subject
registration of {a.what}. `reg_synth register --model {a.name} --moving A --fixed B
--output out` writes the field (ITK displacement in mm), the warped image and,
with `--moving-labels`, the warped labels (docs/reg_synth.md).

{{choice_text}}

{('**Status.** ' + a.status) if a.status else ''}

## Data

- Images `{cfg['data']['images']}` with labels `{cfg['data']['labels']}` ({', '.join(classes)});
  network grid {size} (aspect kept; intensities clipped to the
  {cfg['data']['clip_low_pct']}–{cfg['data']['clip_high_pct']} percentiles, scaled to [0, 1]).
- Split: the first {int(cfg['data']['train_fraction'] * 100)} % of the sorted files train (the last
  {cfg['data'].get('validation_images', 0)} of them validate), the rest test{(' (kept: ' + str(len(cfg['data']['include'])) + ' files of data.include)') if cfg['data']['include'] else ''};
  {res['test_pairs']} ordered test pairs.
- Moving and fixed images must lie on one grid; the network sees them resampled to {size}.

## Training

- Pretraining: {pre_text}; loss Eq. 20 (MSE to the known field + λ‖∇φ‖₁, λ = {cfg['pretrain']['lambda']}).
- Fine-tuning: {'unsupervised on random ordered pairs of training images, ' + cfg['finetune']['similarity'].upper() + ' (window ' + str(cfg['finetune']['ncc_window']) + ') + λ‖∇v‖², λ = ' + str(cfg['finetune']['lambda']) if best['finetune'] else 'none'}.
- Command: `{a.command}` (2 CPU cores shared with other jobs).

| phase | steps | optimiser | wall time | last loss |
|---|---|---|---:|---:|
{phase_line('pretraining', cfg['pretrain'], last_metrics(pre_dir) if pre_dir else None)}
{phase_line('fine-tuning', cfg['finetune'], last_metrics(ft_dir) if ft_dir else None)}

## Test metrics ({len(best['pairs'])} ordered pairs; mean ± std over pairs)

| class | DSC % | ASD (mm) | HD95 (mm) |
|---|---:|---:|---:|
{per_class}

Every row of the grid (each pair's value is the mean over classes):

| synthetic pretraining | real fine-tuning | DSC % | ASD (mm) | HD95 (mm) | \\|J\\|<0 % |
|---|---|---:|---:|---:|---:|
{all_rows}

{curve}![pair](preview.png)

*First test pair, one row per grid row: moving, fixed, warped, warped with the deformed grid, displacement magnitude.*
"""
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(card.replace("{choice_text}", choice_text(a, best, chosen_by, validated, gain)))
    meas = {"run": a.run, "row": best["row"], "command": a.command, "chosen_by": chosen_by,
            "validation_dice": validated.get(best["row"]), "gain_over_unregistered": gain,
            "mean_dice": mean_std(pair_values(best, "dice", None, 100))[0], "test_pairs": len(best["pairs"])}
    with open(os.path.join(a.out, "card_measurements.json"), "w") as f:
        json.dump(meas, f, indent=1)
    print("wrote", a.out, "from", best["row"])


if __name__ == "__main__":
    main()
