"""Data: locating MovieLens-100K, reading its formats, preparing sequences and splits."""

from ur4rec.data.dataset import PreparedData, load_prepared
from ur4rec.data.prepare import PrepareResult, prepare
from ur4rec.data.sources import DatasetFiles, locate_ml100k

__all__ = ["DatasetFiles", "PrepareResult", "PreparedData", "load_prepared", "locate_ml100k", "prepare"]
