"""JointTrainer: determinism, resume, stale-checkpoint refusal, NaN guard, stage freezing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import synthetic_ml, write_grouplens
from ur4rec.data import PreparedData, prepare
from ur4rec.data.batching import training_windows, window_target_positions
from ur4rec.evaluation.scoring import validation_metric
from ur4rec.models import build_model
from ur4rec.pipeline import train
from ur4rec.training import JointTrainer, NonFiniteTrainingError
from ur4rec.training.checkpoint import CheckpointError, load_checkpoint, run_fingerprint, save_checkpoint
from ur4rec.training.run import Workspace, clean_run, embeddings_fingerprint
from ur4rec.training.seeding import seed_everything

SMALL = {"max_seq_len": 8, "sasrec_hidden_dim": 16, "sasrec_num_heads": 2, "retriever_output_dim": 16,
         "moe_num_heads": 2, "moe_num_proxies": 2, "max_memory_size": 2, "epochs_per_stage": 2, "batch_size": 16,
         "patience": 2, "rerank_top_r": 10, "min_user_interactions": 5, "sasrec_epochs": None}


class RandomTexts:
    """Frozen text embeddings for tests (the texts pipeline is tested on its own)."""

    source = "random (tests)"

    def __init__(self, users: int, items: int, dim: int = 384) -> None:
        g = torch.Generator().manual_seed(0)
        self.user = torch.nn.functional.normalize(torch.randn(users, dim, generator=g), dim=-1)
        unit = torch.nn.functional.normalize(torch.randn(items, dim, generator=g), dim=-1)
        self.item = torch.cat([torch.zeros(1, dim), unit])


@pytest.fixture
def small(tmp_path: Path, tmp_cfg):
    folder = write_grouplens(tmp_path / "gl", synthetic_ml(n_users=24, n_items=40, per_user=14))

    def make(**overrides):
        cfg = tmp_cfg(data_path=str(folder), **{**SMALL, **overrides})
        data = PreparedData.load(prepare(cfg).path)
        texts = RandomTexts(data.num_users, data.num_items)
        seed_everything(cfg.seed, "init")
        model = build_model(cfg, data.num_users, data.num_items, texts.user, texts.item)
        return Workspace(cfg, data, texts, model, embeddings_fingerprint(texts.user, texts.item))

    return make


def trainer_for(ws: Workspace, run_dir: Path) -> JointTrainer:
    """A JointTrainer on the workspace, early-stopping on validation NDCG@10 as the pipeline's does."""
    return JointTrainer(ws.model, ws.data, ws.cfg, run_dir, text_fingerprint=ws.text_fingerprint, progress=False,
                        evaluate=lambda model, stage: validation_metric(model, ws.data, ws.cfg, stage))


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _strip_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("sasrec", [{}, {"sasrec_sampling": "prefixes", "sasrec_batch_size": 16},
                                    {"sasrec_sampling": "prefixes", "sasrec_batch_size": 8, "sasrec_prefix_group": 3,
                                     "sasrec_positions": "from_start"}, {"sasrec_precision": "bf16"},
                                    {"sasrec_sampling": "prefixes", "sasrec_batch_size": 16, "sasrec_upper_window": 3,
                                     "sasrec_precision": "bf16"}],
                         ids=["windows", "prefixes", "grouped", "bf16", "window-bf16-as-the-default"])
def test_same_seed_same_history(small, tmp_path: Path, sasrec: dict) -> None:
    """Same seed, same thread count: the same history (every loss, metric and learning rate) and the same
    weights, for each way pretrain_sasrec samples (dropout's masks come from the seeded generator)."""
    a = small(**sasrec)
    train(a.cfg, tmp_path / "a", workspace=a, progress=False)
    b = small(**sasrec)
    train(b.cfg, tmp_path / "b", workspace=b, progress=False)
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert _strip_time(_history(tmp_path / "a")) == _strip_time(_history(tmp_path / "b"))
    stages = [r["stage"] for r in _history(tmp_path / "a")]
    assert stages == [s for s in a.cfg.stages for _ in range(2)]
    assert (tmp_path / "a" / "final.pt").is_file() and (tmp_path / "a" / "config.yaml").is_file()


def test_resume_after_interruption_gives_the_uninterrupted_result(small, tmp_path: Path) -> None:
    full = small()
    train(full.cfg, tmp_path / "full", workspace=full, progress=False)
    part = small()
    train(part.cfg, tmp_path / "part", workspace=part, progress=False, max_epochs=3)  # "killed" after 3 epochs
    assert len(_history(tmp_path / "part")) == 3
    resumed = small()
    train(resumed.cfg, tmp_path / "part", workspace=resumed, progress=False, resume=True)
    assert _strip_time(_history(tmp_path / "part")) == _strip_time(_history(tmp_path / "full"))
    a = torch.load(tmp_path / "full" / "final.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "final.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_batches_stops_after_that_many_optimizer_steps_and_max_epochs_after_epochs(small, tmp_path: Path) -> None:
    """The diagnostics' "train N real batches" (original_checks) trains N batches, not N epochs."""
    ws = small()
    train(ws.cfg, tmp_path / "b", workspace=ws, progress=False, max_batches=2)
    history = [json.loads(line) for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"], r["step"]) for r in history] == [("pretrain_sasrec", 0, 2)]
    ws = small()
    train(ws.cfg, tmp_path / "e", workspace=ws, progress=False, max_epochs=2)
    history = [json.loads(line) for line in (tmp_path / "e" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[1]["step"] > 2


def test_checkpoint_from_another_config_is_refused_with_keys(small, tmp_path: Path) -> None:
    ws = small()
    train(ws.cfg, tmp_path / "r", workspace=ws, progress=False, max_epochs=1)
    other = small(sasrec_dropout=0.0, sasrec_hidden_dim=32)
    with pytest.raises(CheckpointError) as err:
        train(other.cfg, tmp_path / "r", workspace=other, progress=False, resume=True)
    assert set(err.value.differences) == {"sasrec_dropout", "sasrec_hidden_dim"}
    assert "sasrec_dropout" in str(err.value) and "--allow-mismatch" in str(err.value)


def test_checkpoint_from_before_a_new_key_loads_at_its_default_only(small, tmp_path: Path) -> None:
    """A key added to the config after a checkpoint was written is no difference while the run uses its
    default (which keeps the old behaviour); set to anything else, it is."""
    ws = small()
    train(ws.cfg, tmp_path / "r", workspace=ws, progress=False, max_epochs=1)
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    for key in ("sasrec_item_text", "sasrec_user_text_weight"):  # as an older trainer wrote it
        del ck["fingerprint"]["config"][key]
    save_checkpoint(tmp_path / "old.pt", ck)
    current = run_fingerprint(ws.cfg, ws.data.fingerprint, ws.text_fingerprint)
    assert load_checkpoint(tmp_path / "old.pt", current)["model"].keys() == ck["model"].keys()
    other = small(sasrec_item_text="init")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "old.pt", run_fingerprint(other.cfg, other.data.fingerprint, other.text_fingerprint))
    assert set(err.value.differences) == {"sasrec_item_text"}


def test_checkpoint_with_nan_is_refused_naming_the_tensor(small, tmp_path: Path) -> None:
    ws = small()
    train(ws.cfg, tmp_path / "r", workspace=ws, progress=False, max_epochs=1)
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    ck["model"]["sasrec.blocks.0.qkv.weight"][0, 0] = float("nan")
    save_checkpoint(tmp_path / "bad.pt", ck)
    with pytest.raises(CheckpointError, match="sasrec.blocks.0.qkv.weight"):
        load_checkpoint(tmp_path / "bad.pt")


def test_truncated_checkpoint_is_a_clear_error(small, tmp_path: Path) -> None:
    ws = small()
    train(ws.cfg, tmp_path / "r", workspace=ws, progress=False, max_epochs=1)
    raw = (tmp_path / "r" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_nan_guard_names_stage_step_users_and_module(small, tmp_path: Path) -> None:
    ws = small(stages=["pretrain_retriever"])
    with torch.no_grad():
        ws.model.retriever.user_proj[0].weight[0, 0] = float("nan")  # poison one module
    trainer = trainer_for(ws, tmp_path / "r")
    with pytest.raises(NonFiniteTrainingError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "stage pretrain_retriever" in msg and "epoch 0" in msg and "step 0" in msg and "batch users" in msg
    assert "retriever.user_proj.0" in msg


def test_skip_is_explicit_and_counted(small, tmp_path: Path) -> None:
    ws = small(stages=["pretrain_retriever"], on_nonfinite="skip", epochs_per_stage=1)
    trainer = trainer_for(ws, tmp_path / "r")
    real_loss, calls = trainer.retriever_loss, []

    def flaky_loss(*args):  # the first two steps give a non-finite loss (each is computed again to locate it)
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) <= 4 else loss

    trainer.retriever_loss = flaky_loss
    result = trainer.fit()
    assert result.skipped_steps == 2 and _history(tmp_path / "r")[0]["skipped_steps"] == 2


def test_stages_freeze_the_right_parameters(small, tmp_path: Path) -> None:
    ws = small()
    trainer = trainer_for(ws, tmp_path / "r")
    m = ws.model
    expect = {"pretrain_sasrec": (True, False), "pretrain_retriever": (False, True),
              "joint_finetune": (True, True), "end_to_end": (True, True)}
    for stage, (sas, ret) in expect.items():
        trainer._set_trainable(stage)
        assert all(p.requires_grad == sas for p in m.sasrec_parameters()), stage
        assert all(p.requires_grad == ret for p in m.retriever_parameters()), stage
    # one pretrain_sasrec epoch leaves the retriever's weights untouched
    before = {k: v.clone() for k, v in m.retriever.state_dict().items()}
    train(small(stages=["pretrain_sasrec"], epochs_per_stage=1).cfg, tmp_path / "s", workspace=ws, progress=False)
    after = m.retriever.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "memory" not in k)


def test_clean_only_inside_runs_dir(small, tmp_path: Path) -> None:
    ws = small()
    runs = Path(ws.cfg.runs_dir)
    train(ws.cfg, runs / "r", workspace=ws, progress=False, max_epochs=1)
    assert clean_run(runs / "r", runs) and not list((runs / "r").glob("*.pt"))
    with pytest.raises(Exception, match="not inside the runs directory"):
        clean_run(tmp_path, runs)


def test_original_flat_config_trains_unchanged(small, tmp_path: Path) -> None:
    """The original system's config file (512-d retriever, uncertainty weighting, adaptive
    alternation, BPR-era num_negatives) trains as is; only the tiny test data and one epoch differ."""
    import yaml

    from ur4rec.config import CONFIG_DIR

    original = yaml.safe_load((CONFIG_DIR / "original_512d.yaml").read_text())
    original.pop("num_items")  # 1682 is ML-100K's catalogue; the test data is smaller
    ws = small(**{**original, "epochs_per_stage": 1, "adaptive_min_steps": 2, "rerank_top_r": 10})
    result, _ = train(ws.cfg, tmp_path / "orig", workspace=ws, progress=False)
    assert [s.stage for s in result.stages] == original["stages"]
    assert all(s.best_metric >= 0 for s in result.stages)


def test_seeds_sweep_reports_mean_and_std_and_reuses_finished_runs(small, tmp_path: Path) -> None:
    import statistics

    from ur4rec.seeds import run_seeds

    base = small(sampled_negatives=10).cfg  # the synthetic catalogue has 40 items

    def factory(c):
        return small(sampled_negatives=10, seed=c.seed)

    root, logs = tmp_path / "sweep", []
    summary = run_seeds(base, 2, root, log=logs.append, workspace_factory=factory)
    per_seed = [json.loads((root / f"seed-{s}" / "eval.json").read_text()) for s in (base.seed, base.seed + 1)]
    assert all("trained alone" in e["models"]["sasrec"] for e in per_seed)  # not the jointly tuned branch
    values = [e["full"]["test"]["sasrec"]["metrics"]["ndcg@10"] for e in per_seed]
    got = summary["full"]["test"]["sasrec"]["ndcg@10"]
    assert got["values"] == values and values[0] != values[1]  # two seeds, two different runs
    assert got["mean"] == pytest.approx(statistics.fmean(values))
    assert got["std"] == pytest.approx(statistics.stdev(values))
    diffs = [e["full"]["test"]["ur4rec"]["metrics"]["ndcg@10"] - e["full"]["test"]["sasrec"]["metrics"]["ndcg@10"]
             for e in per_seed]
    assert summary["fused_minus_sasrec"]["test"]["values"] == pytest.approx(diffs)
    assert "Fused UR4Rec − SASRec alone" in (root / "seeds.md").read_text()
    assert json.loads((root / "seeds.json").read_text())["seeds"] == [base.seed, base.seed + 1]
    logs.clear()
    run_seeds(base, 2, root, log=logs.append, workspace_factory=factory)
    assert len(logs) == 2 and all("reusing the finished run" in m for m in logs)


def test_two_stage_equals_exact_ranking_when_top_r_covers_the_catalogue(small) -> None:
    from ur4rec.evaluation.evaluate import evaluate_models

    ws = small(rerank_top_r=1000, exact_catalogue="always", sampled_negatives=10)
    ws.model.eval()
    out = evaluate_models(ws.cfg, ws.data, ws.model)
    for split in ("valid", "test"):
        for name in ("ur4rec", "retriever"):
            cmp = out["two_stage_vs_exact"][split][name]
            assert cmp["users_with_same_target_rank"] == 1.0, (split, name, cmp)
            assert out["exact"][split][name]["metrics"] == out["full"][split][name]["metrics"]
    assert "exact" not in evaluate_models(small(exact_catalogue="never", sampled_negatives=10).cfg, ws.data, ws.model)


def test_fusion_weight_sweep_at_weight_zero_is_exactly_sasrec(small) -> None:
    from ur4rec.evaluation.ablations import fusion_weight_sweep
    from ur4rec.evaluation.protocol import evaluate_full_ranking
    from ur4rec.evaluation.scoring import sasrec_scorer

    ws = small()
    table = fusion_weight_sweep(ws.model, ws.data, ws.cfg, weights=(0.0, 0.5), splits=("valid",))
    sasrec = evaluate_full_ranking(sasrec_scorer(ws.model), ws.data, "valid", ws.cfg.max_seq_len, ks=[10])
    assert table.loc[0.0, "valid ndcg@10"] == pytest.approx(sasrec.summary["ndcg@10"])
    assert table.loc[0.5, "valid ndcg@10"] != table.loc[0.0, "valid ndcg@10"]  # the weight is really applied
    assert torch.equal(ws.model.fixed_weights, torch.tensor([0.5, 0.5]))  # the model is left as it was


def test_original_three_checks_report_ranges_and_no_nan(small) -> None:
    from ur4rec.diagnostics.checks import original_checks

    ws = small()
    before = {k: v.clone() for k, v in ws.model.state_dict().items()}
    table = original_checks(ws, batch_sizes=(4, 8), train_batches=2, candidates=10)
    assert set(table["check"]) == {"sasrec_alone", "full_model", "train_then_eval"}
    assert (table["nan"] == 0).all() and (table["inf"] == 0).all() and table["min"].notna().all()
    assert len(table[table["check"] == "full_model"]) == 6  # train/eval x three score components
    assert all(torch.equal(before[k], v) for k, v in ws.model.state_dict().items())  # the model is untouched


def test_recbole_protocol_ranks_known_items_and_ours_excludes_them(small) -> None:
    from ur4rec.evaluation.protocol import evaluate_full_ranking

    ws = small()
    hist, held = ws.data.history("valid"), ws.data.held_out("valid")

    def score(users, seq):  # every user's last known item first, the held-out item second
        s = torch.zeros(len(users), ws.data.num_items + 1)
        for row, u in enumerate(users.tolist()):
            s[row, int(hist[u][-1])] = 2.0
            s[row, int(held[u][0])] = 1.0
        return s

    ours = evaluate_full_ranking(score, ws.data, "valid", ws.cfg.max_seq_len)
    recbole = evaluate_full_ranking(score, ws.data, "valid", ws.cfg.max_seq_len, exclude_known=False)
    assert (ours.ranks == 1).all() and (recbole.ranks == 2).all()


def test_final_model_is_the_best_stage_and_weight_on_validation(small, tmp_path: Path) -> None:
    """final_model_selection: validation keeps the (stage checkpoint, retriever weight) pair with the
    best validation NDCG@10 (ties: earlier stage, smaller weight; pretrain_sasrec's untrained retriever
    is not a candidate) in final.pt, and evaluation ranks with it. final_model_alpha: 1 takes it as is."""
    from ur4rec.evaluation.ablations import fusion_weight_sweep
    from ur4rec.evaluation.evaluate import evaluate_run
    from ur4rec.training.checkpoint import run_fingerprint

    grid = [0.0, 0.3, 1.0]
    opts = {"final_model_selection": "validation", "fusion_weight_grid": grid, "sampled_negatives": 10,
            "final_model_alpha": 1.0}
    ws = small(**opts)
    result, _ = train(ws.cfg, tmp_path / "sel", workspace=ws, progress=False)
    fp = run_fingerprint(ws.cfg, ws.data.fingerprint, ws.text_fingerprint)
    scores = {}  # every (stage, weight), recomputed independently
    for stage in ws.cfg.stages[1:]:
        ws.model.load_state_dict(load_checkpoint(tmp_path / "sel" / f"best-{stage}.pt", fp)["model"])
        table = fusion_weight_sweep(ws.model, ws.data, ws.cfg, weights=grid, splits=("valid",))["valid ndcg@10"]
        scores |= {(stage, w): table[w] for w in grid}
    best = max(scores.values())
    stage, weight = next(k for k, v in scores.items() if v == best)  # dict order: stage order, then weight
    chosen = result.final_selection
    assert (chosen["stage"], chosen["retriever_weight"]) == (stage, weight)
    assert chosen["valid_ndcg@10"] == pytest.approx(best)
    assert "pretrain_sasrec" not in chosen["table"]
    assert chosen["table"]["pretrain_retriever"]["0.0"] == pytest.approx(scores[("pretrain_retriever", 0.0)])
    final = load_checkpoint(tmp_path / "sel" / "final.pt", fp)
    chosen_state = load_checkpoint(tmp_path / "sel" / f"best-{stage}.pt", fp)["model"]
    assert torch.allclose(final["model"]["fixed_weights"], torch.tensor([1.0 - weight, weight]))
    assert all(torch.equal(final["model"][k], v) for k, v in chosen_state.items() if k != "fixed_weights")
    results = evaluate_run(tmp_path / "sel", workspace=small(**opts))
    assert results["full"]["valid"]["ur4rec"]["metrics"]["ndcg@10"] == pytest.approx(best)
    assert results["final_selection"]["stage"] == stage
    assert f"the {stage} checkpoint" in results["models"]["ur4rec"]
    # the thread count changes torch's float sums, so the run records it next to its numbers
    # (and the device, a GPU's float sums differ from the CPU's, and the data-parallel processes)
    assert results["trained_with"] == {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                                       "device": "cpu", "amp": "off", "processes": 1}
    assert results["evaluated_on"] == {"device": "cpu"}
    assert f"on cpu, {torch.get_num_threads()} threads" in (tmp_path / "sel" / "eval.md").read_text()
    # at weight 0 the pretrain_retriever checkpoint is SASRec alone: never worse than it on validation
    sasrec_valid = results["full"]["valid"]["sasrec"]["metrics"]["ndcg@10"]
    assert scores[("pretrain_retriever", 0.0)] == pytest.approx(sasrec_valid)
    assert best >= scores[("pretrain_retriever", 0.0)]


def test_final_model_keeps_sasrec_alone_unless_validation_gain_is_significant(small, tmp_path: Path) -> None:
    from ur4rec.evaluation.ablations import select_final_model
    from ur4rec.evaluation.protocol import evaluate_full_ranking
    from ur4rec.evaluation.scoring import per_pair_scorer, sasrec_scorer
    from ur4rec.training.checkpoint import run_fingerprint

    grid = [0.0, 0.3, 1.0]
    ws = small(final_model_selection="validation", fusion_weight_grid=grid, final_model_alpha=1.0)
    train(ws.cfg, tmp_path / "r", workspace=ws, progress=False)
    fp = run_fingerprint(ws.cfg, ws.data.fingerprint, ws.text_fingerprint)
    states = {s: load_checkpoint(tmp_path / "r" / f"best-{s}.pt", fp)["model"] for s in ws.cfg.stages}
    loose = select_final_model(ws.model, ws.data, ws.cfg, states)
    assert (loose["stage"], loose["retriever_weight"]) != ("pretrain_retriever", 0.0), "needs a non-baseline winner"
    test = loose["paired_test_vs_baseline"]
    assert test["baseline"] == {"stage": "pretrain_retriever", "retriever_weight": 0.0}
    # no permutation p-value can be below 1e-6 (10,000 permutations): the baseline must be kept
    strict = select_final_model(ws.model, ws.data, ws.cfg.model_copy(update={"final_model_alpha": 1e-6}), states)
    assert (strict["stage"], strict["retriever_weight"]) == ("pretrain_retriever", 0.0)
    assert strict["best_on_validation"] == loose["best_on_validation"]
    fused = evaluate_full_ranking(per_pair_scorer(ws.model, "fused", ws.cfg.rerank_top_r), ws.data, "valid",
                                  ws.cfg.max_seq_len, ks=[10])
    alone = evaluate_full_ranking(sasrec_scorer(ws.model), ws.data, "valid", ws.cfg.max_seq_len, ks=[10])
    assert (fused.ranks == alone.ranks).all()  # the shipped model ranks exactly as SASRec alone


def test_fusion_weight_grid_is_validated(tmp_cfg) -> None:
    from ur4rec.errors import ConfigError

    with pytest.raises(ConfigError, match="fusion_weight_grid"):
        tmp_cfg(fusion_weight_grid=[0.0, 1.5])
    with pytest.raises(ConfigError, match="final_model_selection"):
        tmp_cfg(final_model_selection="best")


def test_sasrec_batch_size_sets_the_steps_of_pretrain_sasrec_only(small, tmp_path: Path) -> None:
    ws = small(sasrec_sampling="windows", sasrec_batch_size=4, stages=["pretrain_sasrec", "pretrain_retriever"],
               epochs_per_stage=1)
    trainer = trainer_for(ws, tmp_path / "b")
    trainer.fit()
    steps = {r["stage"]: r["step"] for r in _history(tmp_path / "b")}
    windows = len(trainer.inputs)
    assert steps["pretrain_sasrec"] == -(-windows // 4)
    assert steps["pretrain_retriever"] == -(-windows // 16)


def test_prefix_sampling_and_sasrec_epochs_apply_to_pretrain_sasrec_only(small, tmp_path: Path) -> None:
    ws = small(sasrec_sampling="prefixes", sasrec_batch_size=64, stages=["pretrain_sasrec", "pretrain_retriever"],
               sasrec_epochs=2, epochs_per_stage=1)
    trainer = trainer_for(ws, tmp_path / "p")
    result = trainer.fit()
    targets = sum(len(s) - 1 for s in ws.data.train_sequences())
    assert len(trainer.samples("pretrain_sasrec")[0]) == targets
    assert len(trainer.samples("pretrain_retriever")[0]) == len(trainer.inputs) < targets
    history = _history(tmp_path / "p")
    assert [r["stage"] for r in history] == ["pretrain_sasrec"] * 2 + ["pretrain_retriever"]  # sasrec_epochs
    steps = {r["stage"]: r["step"] for r in history}
    assert steps["pretrain_sasrec"] == 2 * -(-targets // 64)
    assert steps["pretrain_retriever"] == -(-len(trainer.inputs) // 16)
    assert result.skipped_steps == 0


def test_seeds_report_says_when_validation_gave_the_text_branch_no_weight() -> None:
    from ur4rec.seeds import aggregate, to_markdown

    def one(ndcg: float, best_weight: float, p: float) -> dict:
        entry = {"metrics": {"ndcg@10": ndcg, "hit@10": 2 * ndcg}, "ci95": {"ndcg@10": [ndcg - 0.01, ndcg + 0.01]}}
        return {"users_evaluated": 943, "protocol": {"full": "full ranking"},
                "full": {"test": {"ur4rec": entry, "sasrec": entry}},
                "paired_test": {"test": {"ur4rec_vs_sasrec_ndcg@10": {"p_value": 1.0}}},
                "final_selection": {"stage": "pretrain_retriever", "retriever_weight": 0.0, "valid_ndcg@10": 0.12,
                                    "table": {"pretrain_retriever": {"0.0": 0.12}},
                                    "best_on_validation": {"stage": "joint_finetune", "retriever_weight": best_weight,
                                                           "valid_ndcg@10": 0.125},
                                    "paired_test_vs_baseline": {"mean_difference": 0.005, "p_value": p}}}

    summary = aggregate({2020: one(0.10, 0.1, 0.39), 2021: one(0.11, 0.2, 0.26)})
    assert summary["final_selection"][2020]["best_on_validation"]["retriever_weight"] == 0.1
    assert "table" not in summary["final_selection"][2020]
    md = to_markdown(summary)
    assert "the fused model is SASRec alone" in md
    assert "seed 2021: pretrain_retriever checkpoint, retriever weight 0.0 (best pair on validation: joint_finetune, " \
           "weight 0.2, +0.0050 over SASRec alone, paired-test p = 0.260: not significant, not kept)" in md
    assert summary["fused_minus_sasrec"]["test"]["mean"] == 0.0


# ---------------------------------------------------------------- exact resume (in process), user memory


class Killed(Exception):
    """Stands in for SIGKILL in process (tests/test_resume.py kills real processes)."""


def _kill_at(monkeypatch, point: str) -> None:
    def kill_point(name: str) -> None:
        if name == point:
            raise Killed(name)

    monkeypatch.setattr("ur4rec.training.trainer.kill_point", kill_point)


def test_resume_after_early_stopping_finishes_like_the_uninterrupted_run(small, tmp_path: Path, monkeypatch) -> None:
    """Scripted validation metrics make pretrain_sasrec stop early after epoch 1 (patience 1) and
    pretrain_retriever after epoch 2; a kill just before or just after last.pt at those epochs, or
    at the very end, resumes to the uninterrupted history, stage results and weights."""
    script = {"pretrain_sasrec": [0.2, 0.1, 0.3, 0.4], "pretrain_retriever": [0.1, 0.3, 0.2, 0.5]}
    opts = {"stages": ["pretrain_sasrec", "pretrain_retriever"], "epochs_per_stage": 4, "patience": 1}

    def run(run_dir: Path, resume: bool = False):
        ws = small(**opts)
        trainer = trainer_for(ws, run_dir)
        # the epoch being validated = the stage's history lines so far (restored on resume)
        trainer.evaluate = lambda model, stage: script[stage][sum(r["stage"] == stage for r in trainer.history)]
        return trainer.fit(resume=resume), ws.model

    ref, ref_model = run(tmp_path / "ref")
    assert [(s.stage, s.epochs, s.best_epoch, s.stopped_early) for s in ref.stages] == [
        ("pretrain_sasrec", 2, 0, True), ("pretrain_retriever", 3, 1, True)]
    points = ["epoch_end:pretrain_sasrec:1:before_last", "epoch_end:pretrain_sasrec:1:after_last",
              "epoch_end:pretrain_retriever:2:before_last", "epoch_end:pretrain_retriever:2:after_last"]
    for point in points:
        run_dir = tmp_path / point.replace(":", "_")
        _kill_at(monkeypatch, point)
        with pytest.raises(Killed):
            run(run_dir)
        monkeypatch.undo()
        result, model = run(run_dir, resume=True)
        assert result.complete and [vars(s) | {"seconds": 0} for s in result.stages] == \
            [vars(s) | {"seconds": 0} for s in ref.stages], point
        assert _strip_time(_history(run_dir)) == _strip_time(_history(tmp_path / "ref")), point
        ref_state = ref_model.state_dict()
        assert all(torch.equal(ref_state[k], v) for k, v in model.state_dict().items()), point


def test_resume_without_last_checkpoint_starts_afresh_and_drops_the_old_history(small, tmp_path: Path) -> None:
    ws = small(stages=["pretrain_sasrec"], epochs_per_stage=1)
    run_dir = tmp_path / "r"
    train(ws.cfg, run_dir, workspace=ws, progress=False)
    (run_dir / "last.pt").unlink()
    (run_dir / "final.pt").unlink()
    ws = small(stages=["pretrain_sasrec"], epochs_per_stage=1)
    result, _ = train(ws.cfg, run_dir, workspace=ws, progress=False, resume=True)
    assert result.complete and not result.already_finished and len(_history(run_dir)) == 1


def test_resuming_a_finished_run_returns_its_saved_result_without_training(small, tmp_path: Path) -> None:
    ws = small(stages=["pretrain_sasrec"], epochs_per_stage=1)
    first, _ = train(ws.cfg, tmp_path / "r", workspace=ws, progress=False)
    again = small(stages=["pretrain_sasrec"], epochs_per_stage=1)
    before = (tmp_path / "r" / "final.pt").stat().st_mtime_ns
    result, ws2 = train(again.cfg, tmp_path / "r", workspace=again, progress=False, resume=True)
    assert result.already_finished and result.stages == first.stages
    assert (tmp_path / "r" / "final.pt").stat().st_mtime_ns == before and len(_history(tmp_path / "r")) == 1
    final = load_checkpoint(tmp_path / "r" / "final.pt")["model"]
    assert all(torch.equal(final[k], v) for k, v in ws2.model.state_dict().items())  # the saved model is loaded


def test_window_target_positions_index_each_windows_last_target() -> None:
    import numpy as np

    seqs = [np.arange(1, 4), np.arange(10, 22), np.arange(30, 32), np.array([7])]
    for stride in (None, 2):
        _, targets, owners = training_windows(seqs, 4, stride)
        pos = window_target_positions(seqs, 4, stride)
        assert len(pos) == len(targets)
        assert [int(seqs[o][p]) for o, p in zip(owners.tolist(), pos.tolist())] == targets[:, -1].tolist()


def _stored(memory) -> torch.Tensor:
    """Bool [U, M]: which memory slots hold something (the memory's ``slot_pos``, -1 = empty)."""
    return memory.slot_pos >= 0


def test_training_writes_the_user_memory_at_training_target_positions(small, tmp_path: Path) -> None:
    ws = small(stages=["pretrain_retriever"], epochs_per_stage=1, max_memory_size=2, interaction_threshold=3)
    train(ws.cfg, tmp_path / "m", workspace=ws, progress=False)
    memory, cfg = ws.model.retriever.memory, ws.cfg
    stored = _stored(memory)
    assert stored.any(dim=1).float().mean() > 0.5, "training wrote no (or almost no) user memory"
    seqs = ws.data.train_sequences()
    _, _, owners = training_windows(seqs, cfg.max_seq_len, cfg.train_window_stride)
    positions = window_target_positions(seqs, cfg.max_seq_len, cfg.train_window_stride)
    for u in range(ws.data.num_users):  # every slot sits at the position of one of the user's training targets
        assert set(memory.slot_pos[u][stored[u]].tolist()) <= set(positions[owners == u].tolist()), u


def test_held_out_items_never_reach_the_user_memory(tmp_path: Path, tmp_cfg) -> None:
    """Two datasets with the same training interactions but each user's validation and test items
    swapped: after two end_to_end epochs (memory written by both per-pair losses) last.pt is identical,
    memory buffers first."""
    ds = synthetic_ml(n_users=24, n_items=40, per_user=14)
    by_user: dict[int, list] = {}
    for row in ds["inter"]:
        by_user.setdefault(row[0], []).append(row)
    rows_a, rows_b = [], []
    for rows in by_user.values():
        rows = sorted(rows, key=lambda r: (r[3], r[1]))
        t = rows[-1][3]
        (u, x, rx, _), (_, y, ry, _) = rows[-2], rows[-1]
        rows_a += rows[:-2] + [(u, x, rx, t + 10), (u, y, ry, t + 20)]  # distinct times: a fixed order
        rows_b += rows[:-2] + [(u, y, ry, t + 10), (u, x, rx, t + 20)]
    states, data = [], []
    for name, rows in (("a", rows_a), ("b", rows_b)):
        folder = write_grouplens(tmp_path / f"gl-{name}", ds | {"inter": rows})
        cfg = tmp_cfg(data_path=str(folder), data_dir=str(tmp_path / f"data-{name}"),
                      **{**SMALL, "stages": ["end_to_end"], "epochs_per_stage": 3, "interaction_threshold": 3})
        d = PreparedData.load(prepare(cfg).path)
        texts = RandomTexts(d.num_users, d.num_items)
        seed_everything(cfg.seed, "init")
        model = build_model(cfg, d.num_users, d.num_items, texts.user, texts.item)
        ws = Workspace(cfg, d, texts, model, embeddings_fingerprint(texts.user, texts.item))
        train(cfg, tmp_path / f"run-{name}", workspace=ws, progress=False, max_epochs=2)
        states.append(load_checkpoint(tmp_path / f"run-{name}" / "last.pt")["model"])
        data.append(d)
    a, b = data
    assert all((x == y).all() for x, y in zip(a.train_sequences(), b.train_sequences()))
    differ = sum(a.held_out("valid")[u][0] != b.held_out("valid")[u][0] for u in range(a.num_users))
    assert differ == a.num_users, "the two datasets must differ in every user's held-out items"
    memory = [f"retriever.memory.{name}" for name, _ in ws.model.retriever.memory.named_buffers()]
    assert memory and bool((states[0]["retriever.memory.slot_pos"] >= 0).any()), "no memory was written"
    for k in memory:
        assert torch.equal(states[0][k], states[1][k]), f"held-out items reached the user memory ({k})"
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), "held-out items reached training"


def test_grouped_prefixes_train_pretrain_sasrec_with_one_pass_per_group(small, tmp_path: Path) -> None:
    ws = small(sasrec_sampling="prefixes", sasrec_prefix_group=3, sasrec_batch_size=8,
               stages=["pretrain_sasrec"], epochs_per_stage=1)
    trainer = trainer_for(ws, tmp_path / "g")
    seqs = ws.data.train_sequences()
    inputs, targets, _, positions = trainer.samples("pretrain_sasrec")
    assert len(inputs) == sum(-(-(len(s) - 1) // 3) for s in seqs)
    assert int((targets != 0).sum()) == sum(len(s) - 1 for s in seqs)
    assert (targets[:, :-3] == 0).all()
    trainer.fit()
    assert _history(tmp_path / "g")[-1]["step"] == -(-len(inputs) // 8)


def test_bf16_sasrec_loss_is_close_to_fp32_and_leaves_weights_and_gradients_fp32(small, tmp_path: Path) -> None:
    """``sasrec_precision: bf16`` autocasts SASRec's training loss only: same weights give a loss within
    bf16's rounding of the fp32 one, the loss and every gradient stay fp32, and evaluation is untouched."""
    losses = {}
    for precision in ("fp32", "bf16"):
        ws = small(sasrec_precision=precision)
        trainer = trainer_for(ws, tmp_path / precision)
        seq, tgt, users = trainer.inputs[:16], trainer.targets[:16], trainer.window_users[:16]
        ws.model.eval()  # no dropout: the two precisions see the same function
        loss = trainer.sasrec_loss(seq, tgt, users, torch.Generator().manual_seed(0))
        loss.backward()
        assert loss.dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 for p in ws.model.sasrec.parameters() if p.grad is not None)
        losses[precision] = float(loss.detach())
    assert losses["bf16"] != losses["fp32"]  # autocast did act
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"]


def test_seeds_in_parallel_processes_equal_sequential_runs(tmp_path: Path, one_thread) -> None:
    """``ur4rec evaluate --seeds 2 --jobs 2``: each seed trains in its own processes (one thread each)
    and gets the same numbers as the same seeds trained one after another in one process on one
    thread; the aggregate covers both and a second call reuses them."""
    from ur4rec.config import CONFIG_DIR, load_config
    from ur4rec.seeds import run_seeds

    cfg = load_config(CONFIG_DIR / "quick.yaml", {"data_dir": str(tmp_path / "data"), "epochs_per_stage": 1,
                                                   "sasrec_epochs": 1, "allow_download": False})
    logs: list[str] = []
    parallel = run_seeds(cfg, 2, tmp_path / "parallel", log=logs.append, jobs=2, threads=1)
    assert "2 seed(s) to train, 2 at a time, 1 thread(s) each" in logs[0]
    sequential = run_seeds(cfg, 2, tmp_path / "sequential", log=logs.append)
    for s in (cfg.seed, cfg.seed + 1):
        a, b = (json.loads((tmp_path / root / f"seed-{s}" / "eval.json").read_text())
                for root in ("parallel", "sequential"))
        assert a["full"] == b["full"] and a["trained_with"] == b["trained_with"]
    assert parallel["full"] == sequential["full"]
    logs.clear()
    run_seeds(cfg, 2, tmp_path / "parallel", log=logs.append, jobs=2, threads=1)
    assert "0 seed(s) to train" in logs[0]
