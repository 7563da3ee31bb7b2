"""Opening a trained run (``open_run``), the one config-built scorer and the temporary fusion weight,
and an evaluation's results (``RunEvaluation``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_training import small  # noqa: F401  (fixture)
from ur4rec.errors import ConfigError
from ur4rec.evaluation.evaluate import MODELS, evaluate_run
from ur4rec.evaluation.protocol import evaluate_full_ranking
from ur4rec.evaluation.results import to_markdown
from ur4rec.evaluation.scoring import (
    STAGE_BRANCH,
    catalogue_scorer,
    per_pair_scorer,
    retriever_weight,
    sasrec_scorer,
    set_retriever_weight,
    validation_metric,
)
from ur4rec.training.checkpoint import CheckpointError, run_fingerprint, save_checkpoint
from ur4rec.training.opened_run import ALONE_CHECKPOINT, open_run
from ur4rec.training.run import Workspace

ENVIRONMENT = {"torch": torch.__version__, "torch_threads": 1}


def _states(ws: Workspace) -> tuple[dict, dict]:
    """Two different model states of the workspace's model: (alone, final)."""
    alone = {k: v.clone() for k, v in ws.model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    final = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
             for k, v in alone.items()}
    return alone, final


def fake_run(ws: Workspace, run: Path, with_alone: bool = True) -> tuple[dict, dict]:
    """A run folder as training leaves it (config.yaml, final.pt, best-pretrain_retriever.pt), without
    training: the two checkpoints hold different states, so a test can tell which one was loaded."""
    alone, final = _states(ws)
    ws.cfg.save(run)
    fp = run_fingerprint(ws.cfg, ws.data.fingerprint, ws.text_fingerprint)
    save_checkpoint(run / "final.pt", {"model": final, "fingerprint": fp, "config": ws.cfg.to_dict(),
                                       "result": {"environment": ENVIRONMENT}})
    if with_alone:
        save_checkpoint(run / ALONE_CHECKPOINT, {"model": alone, "fingerprint": fp, "config": ws.cfg.to_dict()})
    return alone, final


def _equal(state: dict, expected: dict) -> bool:
    return state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


def test_open_run_loads_final_and_alone_checked_against_the_fingerprint(small, tmp_path: Path) -> None:  # noqa: F811
    alone, final = fake_run(small(), tmp_path / "run")
    fresh = small()
    run = open_run(tmp_path / "run", workspace=fresh)
    assert run.model is fresh.model and not run.model.training
    assert _equal(run.model.state_dict(), final)
    assert run.alone is not run.model and _equal(run.alone.state_dict(), alone)
    assert run.fingerprint == run_fingerprint(fresh.cfg, fresh.data.fingerprint, fresh.text_fingerprint)
    assert run.result == {"environment": ENVIRONMENT} and run.cfg.hash() == fresh.cfg.hash()
    assert _equal(run.state(ALONE_CHECKPOINT), alone)
    (tmp_path / "run" / ALONE_CHECKPOINT).unlink()
    assert open_run(tmp_path / "run", workspace=small()).alone is None


def test_open_run_refuses_a_checkpoint_made_under_another_config(small, tmp_path: Path) -> None:  # noqa: F811
    fake_run(small(), tmp_path / "run")
    small(sasrec_dropout=0.0).cfg.save(tmp_path / "run")  # config.yaml changed after training
    with pytest.raises(CheckpointError, match="sasrec_dropout") as err:
        open_run(tmp_path / "run", workspace=small(sasrec_dropout=0.0))
    assert set(err.value.differences) == {"sasrec_dropout"}
    run = open_run(tmp_path / "run", allow_mismatch=True, workspace=small(sasrec_dropout=0.0))
    assert run.cfg.sasrec_dropout == 0.0
    # the same run, evaluated: refused the same way (evaluate_run opens it with open_run)
    with pytest.raises(CheckpointError, match="sasrec_dropout"):
        evaluate_run(tmp_path / "run", workspace=small(sasrec_dropout=0.0))
    assert not (tmp_path / "run" / "eval.json").exists()


def test_open_run_refuses_weights_that_do_not_fit_and_foreign_workspaces(small, tmp_path: Path) -> None:  # noqa: F811
    fake_run(small(), tmp_path / "run")
    with pytest.raises(ConfigError, match="retriever_output_dim"):  # a workspace of another config
        open_run(tmp_path / "run", workspace=small(retriever_output_dim=8))
    small(retriever_output_dim=8).cfg.save(tmp_path / "run")
    with pytest.raises(CheckpointError, match="do not fit the model"):  # loaded anyway: shapes differ
        open_run(tmp_path / "run", allow_mismatch=True, workspace=small(retriever_output_dim=8))
    with pytest.raises(ConfigError, match="not a run directory"):
        open_run(tmp_path, workspace=small())


def test_catalogue_scorer_is_the_protocol_scorer_at_the_config_top_r(small) -> None:  # noqa: F811
    ws = small(rerank_top_r=7)
    ws.model.eval()

    def ranks(scorer):
        return evaluate_full_ranking(scorer, ws.data, "valid", ws.cfg.max_seq_len).ranks

    with torch.no_grad():
        for branch, reference in (("sasrec", sasrec_scorer(ws.model)),
                                  ("retriever", per_pair_scorer(ws.model, "retriever", 7)),
                                  ("fused", per_pair_scorer(ws.model, "fused", 7))):
            assert (ranks(catalogue_scorer(ws.model, ws.cfg, branch)) == ranks(reference)).all(), branch
        # the top-R is really the config's: another R ranks some user's target differently
        configured = ranks(catalogue_scorer(ws.model, ws.cfg, "fused"))
        assert (ranks(per_pair_scorer(ws.model, "fused", 1)) != configured).any()
    for stage, branch in STAGE_BRANCH.items():
        expected = evaluate_full_ranking(catalogue_scorer(ws.model, ws.cfg, branch), ws.data, "valid",
                                         ws.cfg.max_seq_len, ks=[10]).summary["ndcg@10"]
        assert validation_metric(ws.model, ws.data, ws.cfg, stage) == expected, stage
    with pytest.raises(ValueError, match="unknown stage"):
        validation_metric(ws.model, ws.data, ws.cfg, "pretrain_texts")


def test_retriever_weight_applies_inside_the_block_and_restores_after_errors(small) -> None:  # noqa: F811
    ws = small()
    model = ws.model
    own = model.fixed_weights.clone()
    with retriever_weight(model, 0.25):
        assert torch.equal(model.fixed_weights, torch.tensor([0.75, 0.25]))
    assert torch.equal(model.fixed_weights, own)
    with pytest.raises(RuntimeError, match="boom"), retriever_weight(model, 1.0):
        assert torch.equal(model.fixed_weights, torch.tensor([0.0, 1.0]))
        raise RuntimeError("boom")
    assert torch.equal(model.fixed_weights, own)
    with retriever_weight(model, None):  # None: the model's own weights
        assert torch.equal(model.fixed_weights, own)
    set_retriever_weight(model, 0.1)
    assert torch.equal(model.fixed_weights, torch.tensor([0.9, 0.1]))
    learned = small(fusion_method="learned").model
    with pytest.raises(ValueError, match="fusion_method: weighted"), retriever_weight(learned, 0.5):
        pass


def test_evaluate_run_returns_eval_json_content_and_the_per_user_results(small, tmp_path: Path) -> None:  # noqa: F811
    ws = small(sampled_negatives=10, exact_catalogue="always")
    alone, _ = fake_run(ws, tmp_path / "run")
    ev = evaluate_run(tmp_path / "run", workspace=small(sampled_negatives=10, exact_catalogue="always"))
    on_disk = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev.to_dict() == on_disk and (tmp_path / "run" / "eval.json").read_text() == ev.to_json()
    assert not [k for k in on_disk if k.startswith("_")]
    assert set(on_disk) >= {"full", "sampled", "exact", "paired_test", "final_selection", "models", "trained_with"}
    assert on_disk["trained_with"] == ENVIRONMENT
    assert set(ev) == set(on_disk) and ev["users_evaluated"] == on_disk["users_evaluated"]  # reads like eval.json
    assert set(ev.per_user) == {(s, m) for s in ("valid", "test") for m in MODELS}
    for (split, name), res in ev.per_user.items():
        assert ev["full"][split][name]["metrics"]["ndcg@10"] == res.summary["ndcg@10"]
    assert _equal(ev.alone.state_dict(), alone)
    assert ev.to_markdown() == (tmp_path / "run" / "eval.md").read_text()
    # eval.json read back renders the same lines (its keys come back sorted, so maybe in another order)
    assert sorted(to_markdown(on_disk).splitlines()) == sorted(ev.to_markdown().splitlines())
    table = ev.breakdown_table(ws.data, "test")
    assert set(table["model"]) == set(MODELS) and (table["users"] > 0).all()
    assert set(ev.leaderboard("full", "test").index) == set(MODELS)
