"""Dataset plug-ins. Importing this package registers the built-in datasets."""
from bench.datasets.base import (CorruptDataError, DataNotFoundError, DatasetSource, check_dataset,
                                 default_cache_dir, default_data_root, load_dataset)
from bench.datasets import cifar, digits, imagefolder, imagenette, tinyimagenet  # noqa: F401  (registers)

__all__ = ["CorruptDataError", "DataNotFoundError", "DatasetSource", "check_dataset",
           "default_cache_dir", "default_data_root", "load_dataset"]
