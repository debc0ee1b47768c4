"""hrnet_pyg: the Hybrid Relationship Network (Xu et al., AAAI 2021) for person re-ID, on PyG."""
__version__ = "0.1.0"

from hrnet_pyg.config import HRNetConfig  # noqa: E402

__all__ = ["HRNetConfig", "__version__"]
