"""pyrovae: variational autoencoders written as Pyro programs.

Define a generative model as a Pyro ``model``/``guide`` pair (or use one of
:data:`MODELS`), train it with :func:`fit` under any estimator in
:data:`OBJECTIVES`, and evaluate the true model.
"""

from pyrovae.checkpoint import load_checkpoint, save_checkpoint
from pyrovae.datasets import DATASETS, DataSet
from pyrovae.handlers import kl_scale, plate_scale
from pyrovae.likelihoods import LIKELIHOODS
from pyrovae.models import MODELS, VAE, BetaVAE, make_model
from pyrovae.objectives import OBJECTIVES, make_objective
from pyrovae.schedules import SCHEDULES, Constant, Cyclical, Linear, make_schedule
from pyrovae.train import FitResult, TrainingDiverged, evaluate_elbo, fit

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "LIKELIHOODS",
    "MODELS",
    "OBJECTIVES",
    "SCHEDULES",
    "BetaVAE",
    "Constant",
    "Cyclical",
    "DataSet",
    "FitResult",
    "Linear",
    "TrainingDiverged",
    "VAE",
    "__version__",
    "evaluate_elbo",
    "fit",
    "kl_scale",
    "load_checkpoint",
    "make_model",
    "make_objective",
    "make_schedule",
    "plate_scale",
    "save_checkpoint",
]
