"""RecBole 1.2.1 SASRec on ML-100K, timed per epoch. Runs ONLY in the benchmark venv (.bench-venv).

    python bench/recbole_sasrec.py [EPOCHS] [THREADS] [STOP_AT]

With STOP_AT (a validation NDCG@10), training stops after the first epoch that reaches it.

Settings as measured in shared/NOTES.md: all interactions, leave-one-out by time, max length 50,
hidden 64, inner 256, 2 layers, 2 heads, dropout 0.2/0.2, gelu, CE loss, batch 256, Adam 1e-3,
full-ranking validation NDCG@10. RecBole's import of sine.py turns autograd anomaly mode on for the
whole process (about 6x slower); we turn it back off for a fair comparison and say so.
"""

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
import importlib.util  # noqa: E402

import torch  # noqa: E402

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
stop_at = float(sys.argv[3]) if len(sys.argv) > 3 else None
data_path = str(Path(importlib.util.find_spec("recbole").submodule_search_locations[0]) / "dataset_example")
from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.model.sequential_recommender import SASRec  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

torch.autograd.set_detect_anomaly(False)  # undo recbole/model/sequential_recommender/sine.py

cfg = {
    "data_path": data_path, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "threshold": None, "rm_dup_inter": None, "user_inter_num_interval": "[0,inf)",
    "item_inter_num_interval": "[0,inf)", "MAX_ITEM_LIST_LENGTH": 50,
    "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
    "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.2,
    "attn_dropout_prob": 0.2, "hidden_act": "gelu", "loss_type": "CE", "train_neg_sample_args": None,
    "train_batch_size": 256, "learning_rate": 1e-3, "seed": 2020, "reproducibility": True,
    "metrics": ["NDCG"], "topk": [10], "valid_metric": "NDCG@10", "epochs": epochs, "show_progress": False,
    "checkpoint_dir": "/tmp/recbole_ckpt", "log_wandb": False, "state": "ERROR",
}
config = Config(model="SASRec", dataset="ml-100k", config_dict=cfg)
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, _ = data_preparation(config, dataset)
model = SASRec(config, train_data.dataset).to(config["device"])
trainer = Trainer(config, model)
records, wall = [], 0.0
for epoch in range(epochs):
    t0 = time.perf_counter()
    trainer._train_epoch(train_data, epoch, show_progress=False)
    train_s = time.perf_counter() - t0
    score, _ = trainer._valid_epoch(valid_data, show_progress=False)
    wall += time.perf_counter() - t0
    records.append({"epoch": epoch, "train_s": round(train_s, 2), "valid_ndcg@10": float(score),
                    "wall_s": round(wall, 2)})
    print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    if stop_at is not None and score >= stop_at:
        break
print(json.dumps({"training_sequences": len(train_data.dataset), "epochs": records}))
