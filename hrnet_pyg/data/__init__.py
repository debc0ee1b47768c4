"""Re-ID data: dataset parsers, the synthetic generator, the P x K sampler and transforms.

- :mod:`~hrnet_pyg.data.base`: records, dataset errors, :class:`ReIDDataset`, the torch
  Datasets (:class:`ImageDataset`, :class:`FeatureDataset`) and the shared folder parsers;
- one module per dataset family: :mod:`~hrnet_pyg.data.market1501`,
  :mod:`~hrnet_pyg.data.dukemtmc`, :mod:`~hrnet_pyg.data.cuhk03`, :mod:`~hrnet_pyg.data.msmt17`,
  the small ones with seeded random splits :mod:`~hrnet_pyg.data.viper`,
  :mod:`~hrnet_pyg.data.prid`, :mod:`~hrnet_pyg.data.grid`, :mod:`~hrnet_pyg.data.caviar` and
  their union :mod:`~hrnet_pyg.data.joint`, :mod:`~hrnet_pyg.data.synthetic` (generator and
  dataset), :mod:`~hrnet_pyg.data.custom` (CSV split tables, identity folders);
- :mod:`~hrnet_pyg.data.catalog`: the names, aliases and :func:`build_dataset`.
"""
from hrnet_pyg.data.base import (
    IMG_EXTENSIONS,
    MARKET_PATTERN,
    DatasetError,
    DatasetNotFoundError,
    FeatureDataset,
    ImageDataset,
    ReIDDataset,
    ReIDRecord,
    parse_market_dir,
    read_image,
    seeded_split,
)
from hrnet_pyg.data.catalog import ALIAS_NAMES, DATASET_ALIASES, DATASETS, build_dataset, dataset_statistics
from hrnet_pyg.data.caviar import CAVIAR4REID
from hrnet_pyg.data.cuhk03 import CUHK03, extract_cuhk03_images
from hrnet_pyg.data.custom import CustomCSV, ImageFolderReID
from hrnet_pyg.data.dukemtmc import DukeMTMCreID
from hrnet_pyg.data.grid import GRID
from hrnet_pyg.data.joint import ReIDSmallJoint
from hrnet_pyg.data.market1501 import Market1501
from hrnet_pyg.data.msmt17 import MSMT17
from hrnet_pyg.data.prid import PRID2011
from hrnet_pyg.data.sampler import PKSampler
from hrnet_pyg.data.synthetic import SyntheticConfig, SyntheticReID, generate_synthetic_dataset, images_digest
from hrnet_pyg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from hrnet_pyg.data.viper import VIPeR

__all__ = [
    "ALIAS_NAMES",
    "CAVIAR4REID",
    "CUHK03",
    "CustomCSV",
    "DATASETS",
    "DATASET_ALIASES",
    "DatasetError",
    "DatasetNotFoundError",
    "DukeMTMCreID",
    "FeatureDataset",
    "GRID",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "ImageDataset",
    "ImageFolderReID",
    "MARKET_PATTERN",
    "MSMT17",
    "Market1501",
    "PKSampler",
    "PRID2011",
    "ReIDDataset",
    "ReIDRecord",
    "ReIDSmallJoint",
    "SyntheticConfig",
    "SyntheticReID",
    "VIPeR",
    "build_dataset",
    "build_transforms",
    "dataset_statistics",
    "extract_cuhk03_images",
    "generate_synthetic_dataset",
    "images_digest",
    "parse_market_dir",
    "read_image",
    "seeded_split",
]
