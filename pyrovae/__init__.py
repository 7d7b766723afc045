"""pyrovae: variational autoencoders written as Pyro programs.

Define a generative model as a Pyro ``model``/``guide`` pair (or use one of
:data:`MODELS`), train it with :func:`fit` under any estimator in
:data:`OBJECTIVES`, and evaluate the true model.
"""

from pyrovae.amortization import AmortizationGap, amortization_gap
from pyrovae.checkpoint import load_checkpoint, save_checkpoint
from pyrovae.compare import EstimatorComparison, compare_estimators
from pyrovae.datasets import DATASETS, DataSet
from pyrovae.handlers import kl_scale, plate_scale, surrogate_factor
from pyrovae.likelihoods import LIKELIHOODS
from pyrovae.metrics import METRICS, GroundTruth, evaluate_metrics
from pyrovae.metrics.likelihood import LogLikelihoodResult, iwae_bound, log_likelihood
from pyrovae.models import MODELS, VAE, BetaTCVAE, BetaVAE, CapacityVAE, DIPVAE, FactorVAE, make_model
from pyrovae.objectives import OBJECTIVES, make_objective
from pyrovae.schedules import SCHEDULES, Constant, Cyclical, Linear, make_schedule
from pyrovae.train import FitResult, Stream, TrainingDiverged, evaluate_elbo, fit, seed

__version__ = "0.1.0"

__all__ = [
    "AmortizationGap",
    "BetaTCVAE",
    "CapacityVAE",
    "DIPVAE",
    "EstimatorComparison",
    "FactorVAE",
    "GroundTruth",
    "LogLikelihoodResult",
    "METRICS",
    "amortization_gap",
    "compare_estimators",
    "evaluate_metrics",
    "iwae_bound",
    "log_likelihood",
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
    "Stream",
    "Linear",
    "TrainingDiverged",
    "VAE",
    "__version__",
    "evaluate_elbo",
    "seed",
    "fit",
    "kl_scale",
    "load_checkpoint",
    "make_model",
    "make_objective",
    "make_schedule",
    "plate_scale",
    "save_checkpoint",
    "surrogate_factor",
]
