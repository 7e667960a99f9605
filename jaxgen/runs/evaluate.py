"""Scoring a run's samples with a trained classifier: ``evaluate_run`` (evaluate.py) and the
``EvaluateEvery`` epoch hook (``--eval-every``). The scores themselves are ``jaxgen.metrics``'s."""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
import numpy as np

from jaxgen import parallel, viz
from jaxgen.errors import JaxgenError
from jaxgen.keys import named_key
from jaxgen.metrics.evaluator import (
    Evaluator,
    check_dataset,
    check_num_samples,
    real_splits,
    summarise_runs,
    train_classifier_hint,
)
from jaxgen.metrics.features import FeatureExtractor
from jaxgen.runs.registry import task_class
from jaxgen.runs.restore import draw_samples, newest_meta, restore_newest
from jaxgen.train import ensemble
from jaxgen.train.classifier import ClassifierTask
from jaxgen.workdir import write_atomically

EVAL_FILE = "eval.json"
HISTORY_FILE = "eval_history.jsonl"  # one row per evaluation during training


def classifier_meta(classifier_dir: str) -> tuple[int, dict]:
    """The newest checkpoint's (epoch, meta) of a classifier workdir, checked to be one."""
    epoch, meta = newest_meta(classifier_dir, "--classifier",
                              train_classifier_hint(classifier_dir))
    if meta.get("task") != ClassifierTask.name:
        raise JaxgenError(f"--classifier {classifier_dir} holds a {meta.get('task')} run, not a "
                          "classifier; pass the --workdir of experiments/train_classifier.py.")
    return epoch, meta


def load_classifier(classifier_dir: str, devices: Optional[list] = None,
                    batch_size: int = 512) -> FeatureExtractor:
    """The classifier trained in ``classifier_dir`` (its newest checkpoint) as a feature
    extractor replicated over ``devices`` (default: all)."""
    classifier_meta(classifier_dir)
    restored = restore_newest(classifier_dir, devices=devices)
    return restored.task.feature_extractor(
        restored.state.model.params, parallel.make_mesh(devices),
        directory=os.path.abspath(classifier_dir), epoch=restored.epoch, batch_size=batch_size)


def evaluate_run(workdir: str, classifier_dir: str, num_samples: int = 10000,
                 data_dir: Optional[str] = None, seed: int = 0, devices: Optional[list] = None,
                 k: int = 3, log=print) -> dict:
    """Scores ``num_samples`` samples of the generative run in ``workdir`` (its newest
    checkpoint) and the real-data floor, with the classifier in ``classifier_dir``; writes
    ``workdir/eval.json`` (process 0) and returns its content. Everything is checked before
    anything is computed or written.

    A seed ensemble's workdir (``--num-seeds``) has each run scored on samples drawn with the
    same key; the scores are their mean, ``"std"`` their standard deviation over the runs
    (``metrics.summarise_runs``) and ``"runs"`` each run's scores, with its seed."""
    start = time.time()
    if not isinstance(k, int) or not 1 <= k < num_samples:
        raise JaxgenError(f"--k must be a positive integer below --num-samples {num_samples}, "
                          f"got {k}.")
    _, model_meta = newest_meta(workdir, "--workdir", "pass the --workdir of a training run")
    task_name, dataset = model_meta.get("task"), model_meta.get("config", {}).get("dataset")
    if not task_class(task_name, workdir).is_generative():
        raise JaxgenError(f"--workdir {workdir} holds a {task_name} run, which is not a "
                          "generative model; pass the --workdir of a GAN or VAE run.")
    _, cls_meta = classifier_meta(classifier_dir)
    check_dataset(cls_meta["config"]["dataset"], dataset, classifier_dir)
    check_num_samples(num_samples, cls_meta["config"]["feature_dim"])

    extractor = load_classifier(classifier_dir, devices=devices)
    evaluator = Evaluator(extractor, dataset, num_samples, data_dir, seed, k)
    # As sample_images draws them; the epoch is the checkpoint's actually restored.
    model = restore_newest(workdir, devices=devices)
    runs = ensemble.num_runs(model.task)
    if runs == 1:
        scores, floor = _score_samples(evaluator, model.task, model.state.model,
                                       jax.random.PRNGKey(seed))
    else:
        per_run = []
        for r in range(runs):
            scores, floor = _score_samples(evaluator, model.task,
                                           ensemble.run_state(model.state.model, r),
                                           jax.random.PRNGKey(seed))
            per_run.append({"run": r, "seed": model.task.config.seed + r, **scores})
            if parallel.is_main_process():
                log(f"run {r} (seed {model.task.config.seed + r}): FID {scores['fid']:.3f}")
        scores = {**summarise_runs(per_run), "runs": per_run}
    result = {"model": {"workdir": os.path.abspath(workdir), "task": task_name,
                        "dataset": dataset, "checkpoint_epoch": model.epoch,
                        **({"num_runs": runs} if runs > 1 else {})},
              **scores,
              "num_samples": num_samples, "seed": seed, "k": k,
              "floor": floor, "classifier": evaluator.classifier_info(),
              "seconds": time.time() - start}
    if parallel.is_main_process():
        _write_json(os.path.join(os.path.abspath(workdir), EVAL_FILE), result)
    return result


def _score_samples(evaluator: Evaluator, task, model, key: jax.Array) -> tuple[dict, dict]:
    """The scores of ``evaluator.num_samples`` samples of ``model`` drawn with ``key``, and the
    floor. A conditional model draws every category equally often (0, 1, ..., K-1, 0, ...) and
    gets ``label_accuracy`` too (its floor: the classifier's accuracy on the real test images);
    one whose categories were learned without labels (infoGAN) has them matched to classes."""
    num, classes = evaluator.num_samples, task.conditional_classes
    labels = np.arange(num) % classes if classes else None
    images = draw_samples(task, model, num, key, labels=labels)
    if labels is None:
        return evaluator.evaluate(images), evaluator.floor
    scores = evaluator.evaluate(images, labels, match_codes=0 if task.needs_labels else classes)
    return scores, {**evaluator.floor, "label_accuracy": evaluator.floor_label_accuracy}


def _write_json(path: str, obj) -> None:
    with write_atomically(path) as f:
        json.dump(obj, f, indent=2)


def read_history(workdir: str) -> list[dict]:
    """The scores :class:`EvaluateEvery` wrote in ``workdir``'s ``eval_history.jsonl``, one dict
    per evaluation, oldest first ([] when it wrote none)."""
    path = os.path.join(workdir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class EvaluateEvery:
    """An epoch hook for ``loop.train``: every ``every`` epochs (and after the last), scores
    ``num_samples`` samples of the model being trained as ``evaluate_run`` does, appends the
    scores to ``WORKDIR/eval_history.jsonl`` and draws ``WORKDIR/<task>_fid.png``.

    The samples come from one fixed key of the run (``named_key(rng, "sample", 1)``), so the
    curve shows the model changing, not the latent draws. The classifier is checked when the
    hook is made (so bad input stops training before it starts) and restored at the first
    evaluation, onto the training mesh's devices. ``samples_flag`` is the flag that set
    ``num_samples``, which an error about it names."""

    def __init__(self, classifier_dir: str, every: int, num_samples: int = 10000,
                 data_dir: Optional[str] = None, dataset: Optional[str] = None, seed: int = 0,
                 k: int = 3, samples_flag: str = "--eval-samples"):
        if not isinstance(every, int) or every < 1:
            raise JaxgenError(f"--eval-every must be a positive integer, got {every}.")
        _, meta = classifier_meta(classifier_dir)
        if dataset is not None:
            check_dataset(meta["config"]["dataset"], dataset, classifier_dir)
        check_num_samples(num_samples, meta["config"]["feature_dim"], samples_flag)
        if dataset is not None:  # the real images too, before an epoch is trained
            real_splits(num_samples, dataset, data_dir, samples_flag)
        self.classifier_dir, self.every, self.num_samples = classifier_dir, every, num_samples
        self.data_dir, self.seed, self.k, self.samples_flag = data_dir, seed, k, samples_flag
        self._evaluator: Optional[Evaluator] = None

    def __call__(self, task, state, epoch: int, workdir: str) -> Optional[dict]:
        """Evaluates after every ``every``-th epoch and the last; returns the scores as
        TensorBoard shows them (``eval/fid``, ..., ``eval_floor/fid``, ...)."""
        if epoch % self.every and epoch != task.config.epochs:
            return None
        mesh = state.step.sharding.mesh
        if self._evaluator is None:
            extractor = load_classifier(self.classifier_dir, devices=list(mesh.devices.flat))
            self._evaluator = Evaluator(extractor, task.config.dataset, self.num_samples,
                                        self.data_dir, self.seed, self.k, self.samples_flag)
        runs = ensemble.num_runs(task)
        if runs == 1:
            scores, floor = _score_samples(self._evaluator, task, state.model,
                                           named_key(state.rng, "sample", 1))
            shown = {f"eval/{k}": v for k, v in scores.items() if _is_number(v)}
        else:  # each run's samples from its own fixed key; TensorBoard: a curve per run
            per_run = []
            for r in range(runs):
                run_scores, floor = _score_samples(
                    self._evaluator, task, ensemble.run_state(state.model, r),
                    named_key(state.rng[r], "sample", 1))
                per_run.append({"run": r, **run_scores})
            scores = {**summarise_runs(per_run), "runs": per_run}
            shown = {f"eval/{k}": [run[k] for run in per_run] for k in scores["std"]}
        row = {"epoch": epoch, **scores, "floor": floor}
        if parallel.is_main_process():
            self._write(task, workdir, row)
            print(f"Eval: [{epoch:2d}] {_scores_line(row)}", flush=True)
        return {**shown, **{f"eval_floor/{k}": v for k, v in floor.items() if _is_number(v)}}

    def _write(self, task, workdir: str, row: dict) -> None:
        # a resumed run evaluates its epochs again: keep each once
        rows = [r for r in read_history(workdir) if r["epoch"] < row["epoch"]] + [row]
        with write_atomically(os.path.join(workdir, HISTORY_FILE)) as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        fid = ([r["fid"] for r in rows] if "runs" not in row else
               [[r["runs"][i]["fid"] for r in rows] for i in range(len(row["runs"]))])
        viz.plot_curves({"FID": fid,
                         "real-data floor": [r["floor"]["fid"] for r in rows]},
                        os.path.join(workdir, f"{task.name}_fid.png"), xlabel="epoch",
                        ylabel=f"FID ({self.num_samples} samples)",
                        title=f"{task.name} on {task.config.dataset}",
                        x=[r["epoch"] for r in rows])


def _scores_line(row: dict) -> str:
    """An evaluation's scores in one line (an ensemble's as mean ± std over its runs)."""
    std = row.get("std", {})

    def show(key: str, fmt: str) -> str:
        return fmt.format(row[key]) + (f" ± {fmt.format(std[key])}" if key in std else "")

    return (f"FID {show('fid', '{:.3f}')} (floor {row['floor']['fid']:.3f}), "
            f"IS {show('inception_score', '{:.3f}')}, "
            f"classes {show('classes_covered', '{:.1f}' if std else '{}')}, "
            f"precision {show('precision', '{:.3f}')}, recall {show('recall', '{:.3f}')}"
            + (f", label accuracy {show('label_accuracy', '{:.3f}')}"
               if "label_accuracy" in row else ""))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
