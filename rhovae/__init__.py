"""rhovae: compare approximate posteriors q(z|x) in VAEs on MNIST and Fashion-MNIST.

The package is Hydra-free apart from ``experiment.py``'s use of OmegaConf; ``train.py`` is the entry point.
"""

__version__ = "0.1.0"
