"""RecBole 1.2.1 SASRec trained on the workbench's exact split; dumps its catalogue scores.

Runs ONLY in the benchmark venv (.bench-venv); called by bench/accuracy.py, which exported the split
as RecBole benchmark atomic files (``<name>.train|valid|test.inter`` with ``item_id_list``, one row
per training target, so RecBole does no splitting or augmentation of its own). Settings as in
shared/NOTES.md (hidden 64, inner 256, 2 layers, 2 heads, dropout 0.2/0.2, gelu, CE, batch 256,
Adam 1e-3, max length 50, full-ranking validation NDCG@10, early stopping after ``stopping_step``
evaluations without gain). The best checkpoint then scores the whole catalogue for every user's
validation and test history; the scores, in the workbench's item ids, go to an .npz that
bench/accuracy.py ranks with the workbench's metric code.

    python bench/recbole_accuracy.py EXPORT_DIR DATASET OUT.npz EPOCHS STOPPING_STEP [SEED]
"""

import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("UR4REC_BENCH_THREADS", "2")))  # bench/accuracy.py --jobs
export_dir, dataset_name, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
epochs, stopping_step = int(sys.argv[4]), int(sys.argv[5])
seed = int(sys.argv[6]) if len(sys.argv) > 6 else 2020

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.model.sequential_recommender import SASRec  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

torch.autograd.set_detect_anomaly(False)  # undo recbole/model/sequential_recommender/sine.py

cfg = {
    "data_path": export_dir, "benchmark_filename": ["train", "valid", "test"],
    "load_col": {"inter": ["user_id", "item_id_list", "item_id"]}, "alias_of_item_id": ["item_id_list"],
    "MAX_ITEM_LIST_LENGTH": 50, "eval_args": {"group_by": "user", "order": "TO", "mode": "full"},
    "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.2,
    "attn_dropout_prob": 0.2, "hidden_act": "gelu", "loss_type": "CE", "train_neg_sample_args": None,
    "train_batch_size": 256, "eval_batch_size": 4096, "learning_rate": 1e-3, "seed": seed,
    "reproducibility": True, "metrics": ["Hit", "NDCG", "MRR"], "topk": [10, 20], "valid_metric": "NDCG@10",
    "epochs": epochs, "stopping_step": stopping_step, "show_progress": False,
    # Own folder per run: RecBole names checkpoints by model and second, so runs started together
    # (--jobs 2) in a shared folder overwrite each other's best model and report the same scores.
    "checkpoint_dir": tempfile.mkdtemp(prefix=f"recbole_accuracy_{seed}_"), "log_wandb": False, "state": "ERROR",
}
config = Config(model="SASRec", dataset=dataset_name, config_dict=cfg)
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
model = SASRec(config, train_data.dataset).to(config["device"])
trainer = Trainer(config, model)
epochs_run = [0]
_train_epoch = trainer._train_epoch


def counted_train_epoch(*args, **kwargs):
    epochs_run[0] += 1
    return _train_epoch(*args, **kwargs)


trainer._train_epoch = counted_train_epoch
t0 = time.perf_counter()
best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
train_s = time.perf_counter() - t0
own_test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)  # loads the best checkpoint
model.eval()


def scores_for(histories_path: str) -> np.ndarray:
    """Scores [users, max_item_id + 1] in the workbench's item ids for the given histories."""
    with open(histories_path) as f:
        histories = json.load(f)  # list of lists of workbench item ids (as ints), oldest first
    n_ours = max(int(t) for t in dataset.field2id_token["item_id"][1:]) + 1
    rb_ids = dataset.token2id("item_id", [str(i) for i in range(1, n_ours)])
    out = np.full((len(histories), n_ours), -np.inf, dtype=np.float32)
    for start in range(0, len(histories), 512):
        batch = histories[start:start + 512]
        seq = torch.zeros(len(batch), 50, dtype=torch.long)
        lengths = torch.zeros(len(batch), dtype=torch.long)
        for row, h in enumerate(batch):
            h = h[-50:]  # RecBole's sequences are left-aligned, padded at the end
            seq[row, :len(h)] = torch.as_tensor(dataset.token2id("item_id", [str(i) for i in h]))
            lengths[row] = len(h)
        with torch.no_grad():  # what SASRec.full_sort_predict computes, without its Interaction wrapper
            s = model.forward(seq, lengths) @ model.item_embedding.weight.T
        out[start:start + len(batch), 1:] = s[:, torch.as_tensor(rb_ids)].numpy()
    return out


result = {"seed": seed, "threads": torch.get_num_threads(), "epochs_trained": epochs_run[0],
          "train_s": round(train_s, 1),
          "best_valid_ndcg@10_recbole_protocol": float(best_valid),
          "test_recbole_protocol": {k: float(v) for k, v in own_test.items()},
          "training_rows": len(train_data.dataset)}
np.savez_compressed(out_path, valid=scores_for(os.path.join(export_dir, "valid_histories.json")),
                    test=scores_for(os.path.join(export_dir, "test_histories.json")))
shutil.rmtree(config["checkpoint_dir"], ignore_errors=True)
print(json.dumps(result))
