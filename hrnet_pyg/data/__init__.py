"""Re-ID data: dataset parsers, the synthetic generator, the P x K sampler and transforms."""
from hrnet_pyg.data.datasets import (
    DATASETS,
    DatasetError,
    DatasetNotFoundError,
    FeatureDataset,
    ImageDataset,
    ReIDDataset,
    ReIDRecord,
    build_dataset,
    dataset_statistics,
    read_image,
)
from hrnet_pyg.data.sampler import PKSampler
from hrnet_pyg.data.synthetic import SyntheticConfig, generate_synthetic_dataset
from hrnet_pyg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetNotFoundError",
    "FeatureDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDataset",
    "PKSampler",
    "ReIDDataset",
    "ReIDRecord",
    "SyntheticConfig",
    "build_dataset",
    "build_transforms",
    "dataset_statistics",
    "generate_synthetic_dataset",
    "read_image",
]
