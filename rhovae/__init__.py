"""rhovae: compare approximate posteriors q(z|x) in VAEs on MNIST and Fashion-MNIST.

``rhovae.config`` holds the configuration (Hydra is used there and by ``tuning``); the model code (posteriors,
networks, vae, trainer, evaluation) knows neither Hydra nor OmegaConf; ``rhovae.build`` and ``rhovae.experiment`` put
the two together. ``train.py`` is the entry point.
"""

__version__ = "0.1.0"
