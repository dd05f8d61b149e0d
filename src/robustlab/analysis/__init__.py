"""Analyses of trained and random networks.

From Xu & Yang, "Understanding Adversarial Robustness from Feature Maps of Convolutional
Layers" (``papers/feature-map-strides``):

- :func:`anti_perturbation_ratio`: the fraction of predictions a PGD attack leaves unchanged,
  per radius (Sec. IV-B, Table II);
- :func:`toy_disturbance` and :func:`plot_toy_disturbance`: the toy experiment on a random
  4-layer CNN, output disturbance vs feature size under average and max pooling (Sec. III-B,
  Fig. 2; Appendix A, Fig. 8);
- :func:`cost`: FLOPs, activation memory and parameters of one forward (Sec. IV-B, Fig. 7).

From the gradient-norm thesis (``papers/gradient-norm-regularization``),
:mod:`~robustlab.analysis.gradients`: input-gradient norms split by PGD success (Table 4.1),
saliency/edge correlation (Table 5.1), Hessian power iteration and geometry statistics
(Table A.1), local linearity error (Eq. A.1), the attack-direction profile (Fig. A.3), robust
accuracy vs eps (Fig. 4.1) and the gradient grid (Fig. 1.1).

From Ma et al., "Adversarial Robustness via Deformable Convolution with Stochasticity"
(``papers/deformable-conv-stochasticity``), :mod:`~robustlab.analysis.dcs`: the gradient cosine
similarity between inference paths (Eq. 6, Fig. 4b) and the bounds on ``n`` (Eq. 8, 11, 12).

From the sparse-randomized-encoder paper (``papers/sparse-randomized-encoder``),
:mod:`~robustlab.analysis.sparse`: atom correlations vs first-layer filter activations
(App. 8.1, Fig. 2), the expected fraction of corrupted patches (App. 8.5, Fig. 4) and the
autoencoder image grid (App. 8.8, Fig. 9).

This package imports ``core`` and ``attacks`` only (the house plan).
"""

from . import anti_perturbation as _anti_perturbation
from . import cost as _cost
from . import dcs as _dcs
from . import gradients as _gradients
from . import sparse as _sparse
from . import toy as _toy
from .anti_perturbation import *  # noqa: F403
from .cost import *  # noqa: F403
from .dcs import *  # noqa: F403
from .gradients import *  # noqa: F403
from .sparse import *  # noqa: F403
from .toy import *  # noqa: F403

# every analysis module's public names, listed once, in its own ``__all__``
__all__ = [
    *_anti_perturbation.__all__,
    *_cost.__all__,
    *_dcs.__all__,
    *_gradients.__all__,
    *_sparse.__all__,
    *_toy.__all__,
]
