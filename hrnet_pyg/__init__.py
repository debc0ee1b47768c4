"""hrnet_pyg: the Hybrid Relationship Network (Xu et al., AAAI 2021) for person re-ID, on PyG."""
__version__ = "0.1.0"

from hrnet_pyg.config import HRNetConfig  # noqa: E402
from hrnet_pyg.data import build_dataset  # noqa: E402
from hrnet_pyg.evaluation import evaluate_rank  # noqa: E402
from hrnet_pyg.extractor import FeatureExtractor  # noqa: E402
from hrnet_pyg.layers import IndividualRelationConv, PairwiseRelationConv, VerificationHead  # noqa: E402
from hrnet_pyg.model import HRNet, HRNetOutput  # noqa: E402
from hrnet_pyg.rerank import relational_rerank  # noqa: E402

__all__ = [
    "FeatureExtractor",
    "HRNet",
    "HRNetConfig",
    "HRNetOutput",
    "IndividualRelationConv",
    "PairwiseRelationConv",
    "VerificationHead",
    "__version__",
    "build_dataset",
    "evaluate_rank",
    "relational_rerank",
]
