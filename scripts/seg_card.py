#!/usr/bin/env python3
"""Ship the best segmentation model of a seg_fewshot grid with a model card.

Picks the run with the highest mean (over test subjects) average DSC, copies
its model.pt, config.json and metrics.jsonl into --out, and writes README.md
(data, labelled subjects, augmentation, steps, wall time, test metrics per
class, the grid's picture) and card_measurements.json.

  scripts/seg_card.py --grid runs/seg-acdc-cpu --out models/seg-cardiac2d --command "..."
"""
import argparse
import json
import math
import os
import shutil


def mean_std(values):
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--command", default="")
    a = p.parse_args()
    with open(os.path.join(a.grid, "results.json")) as f:
        res = json.load(f)
    runs = res["runs"]
    best = max(runs, key=lambda r: mean_std(r["per_subject"]["dice"]["avg"])[0])
    name = f"{best['augmentation']}-n{best['subjects']}-s{best['seed']}"
    run_dir = os.path.join(a.grid, "runs", name)
    os.makedirs(a.out, exist_ok=True)
    for f in ("model.pt", "config.json", "metrics.jsonl"):
        shutil.copy(os.path.join(run_dir, f), os.path.join(a.out, f))
    if os.path.exists(os.path.join(a.grid, "predictions.png")):
        shutil.copy(os.path.join(a.grid, "predictions.png"), os.path.join(a.out, "preview.png"))
    cfg = res["config"]
    classes = cfg["data"]["classes"]
    rows = []
    for cls in classes + ["avg"]:
        cells = []
        for metric, scale, digits in (("dice", 100, 1), ("sensitivity", 100, 1), ("precision", 100, 1),
                                      ("asd", 1, 2), ("hd95", 1, 2)):
            m, s = mean_std(best["per_subject"][metric][cls])
            cells.append(f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}")
        rows.append(f"| {cls} | " + " | ".join(cells) + " |")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    ranking = sorted(((mean_std(r["per_subject"]["dice"]["avg"])[0], f"{r['augmentation']}, {r['subjects']} subject(s)")
                      for r in runs), reverse=True)
    card = f"""# seg-cardiac2d: a 2D cardiac MRI segmentation U-Net (RV, myocardium, LV) from the few-shot grid

A U-Net that segments short-axis cardiac cine MRI slices into right-ventricle cavity (1), myocardium (2) and
left-ventricle cavity (3); volumes are segmented slice by slice. It is the best run of the few-shot grid
(`seg_fewshot run`, paper Table 2) on ACDC.

```bash
build/apps/seg_fewshot predict --model seg-cardiac2d --input scan.nii.gz --output seg/
```

## What it is
- **Run:** `{name}`: augmentation **{best['augmentation']}**, **{best['subjects']} labelled subject(s)**
  (ACDC patients {', '.join(str(n) for n in best['chosen'])}, both frames: {best['labelled_slices']} slices), seed {best['seed']}.
- **Network:** vanilla U-Net, widths {cfg['unet']['widths']}, {'sigmoid + BCE (paper Eq. 17)' if cfg['unet']['loss'] == 'bce' else 'softmax cross-entropy + Dice'}, input {cfg['data']['size'][0]}×{cfg['data']['size'][1]}
  (each slice fitted keeping its aspect ratio; intensities clipped to the volume's 0.5/99.5 percentiles).
- **Training:** {cfg['train']['steps']} steps, batch {cfg['train']['batch_size']}, Adam lr {cfg['train']['lr']} ({cfg['train']['lr_schedule']}),
  {best['train_seconds'] / 60:.1f} min on 2 CPU cores; final loss {last['loss']:.4f}.
- **Chosen how:** the highest mean test DSC of the {len(runs)} runs of the grid. The test subjects chose it, so
  its test numbers are slightly optimistic as an estimate for new data; nothing else was tuned on them.
- **Grid command:** `{a.command}`

## Test metrics (ACDC patients with number mod 20 in 10-18: {res['test_subjects']} subjects, both frames)
Mean ± std over subjects. DSC, sensitivity, precision in %; ASD and HD95 in pixels (ACDC as shipped has no
real spacing; slices count as 1 apart).

| class | DSC | sensitivity | precision | ASD | HD95 |
|---|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + """

All runs of the grid by mean DSC: """ + "; ".join(f"{n} {m * 100:.1f}" for m, n in ranking) + """.

## Preview
A test slice (first test case, the slice with the most labelled voxels): per labelled-subset size, image,
ground truth and each augmentation's prediction (red RV, green myocardium, blue LV).

![predictions](preview.png)

## Limits
Trained on one public data set (ACDC, 1.5/3 T cine MRI) at 128² on a CPU budget: expect lower accuracy on
other scanners, on long-axis views and at the apex and base. It segments 2D slices and knows nothing of 3D
continuity.
"""
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(card)
    with open(os.path.join(a.out, "card_measurements.json"), "w") as f:
        json.dump({"run": name, "best": {k: v for k, v in best.items() if k != "cases"},
                   "command": a.command}, f, indent=1)
    print(a.out, name)


if __name__ == "__main__":
    main()
