"""Data: locating MovieLens-100K/-1M or a generic interaction log, reading their formats, preparing
sequences and splits (docs/datasets.md)."""

from ur4rec.data.dataset import PreparedData, load_prepared
from ur4rec.data.prepare import PrepareResult, prepare
from ur4rec.data.readers import CsvOptions
from ur4rec.data.sources import DatasetFiles, locate_custom, locate_ml100k, locate_movielens

__all__ = ["CsvOptions", "DatasetFiles", "PrepareResult", "PreparedData", "load_prepared", "locate_custom",
           "locate_ml100k", "locate_movielens", "prepare"]
