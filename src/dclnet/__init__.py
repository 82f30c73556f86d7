"""DCLNet: dense contrastive learning for visible-infrared person re-identification."""

__version__ = "0.1.0"

__all__ = ["__version__"]
